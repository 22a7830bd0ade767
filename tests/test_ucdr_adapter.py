"""UCDR-Adapter computes what its official code computes (with the repairs it needs to run).

The numbers come from running fine68/UCDR2024 (dbbd797, repaired as
``tests/fixtures/official/make_ucdr_adapter_fixture.py`` says) on ProS's tiny OpenAI-layout CLIP (width
768: its adapters are hard-coded to it) with fixed weights and inputs; here the same CLIP is built
through open_clip (``test-pros-tiny.json``) and our port must give the same text features, sequences,
query, features, losses (the random-sample triplet's draws included), gradients, Adam steps, moving
averages and queues over two stage-1 steps and one stage-2 step, to 1e-4 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import official_inputs as oi
from official_checks import check, pros_tiny_backbone
import pytest
import torch
from sbir_bench.baselines.ucdr_adapter import ADAPTER, PROMPTS, UCDRAdapter, UCDRAdapterConfig, random_sample_triplet

from sbir_bench.config import TrainConfig
from sbir_bench.training.trainer import build_optimizer, lr_lambda

HERE = Path(__file__).parent
EXPECTED = json.loads((HERE / "fixtures" / "official" / "ucdr_adapter.json").read_text())
NAMES = {"text_prompt_learner.ctx": "ctx", "image_encoder.specific_domain_prompts": "domain_prompts",
         "image_encoder.specific_class_prompts": "class_prompts", "image_encoder.feature_template": "class_embedding",
         "image_encoder.feature_proj": "image_proj",
         "image_encoder_m.specific_domain_prompts": "momentum_domain_prompts",
         "image_encoder_m.specific_class_prompts": "momentum_class_prompts"}
ADAPTERS = ("W_image", "W_prompt", "prompt_proj", "layer_norm2")


@pytest.fixture(scope="module", autouse=True)
def _configs():
    import open_clip
    open_clip.add_model_config(HERE / "fixtures" / "model_configs")


def ours(official: str) -> str:
    if official in NAMES:
        return NAMES[official]
    head, _, rest = official.partition(".")
    if head == "image_encoder" and rest.startswith(ADAPTERS):
        return f"attention.{rest}"
    raise KeyError(official)


def official_shape(name: str, state: dict) -> tuple:
    """The shape of an official own tensor: ours where we build it, the main branch's for the momentum
    copy's adapters, 768 for the unused ``layer_norm1``."""
    if "layer_norm1" in name:
        return (768,)
    if name.startswith("image_encoder_m.") and name not in NAMES:
        name = "image_encoder." + name[len("image_encoder_m."):]
    return tuple(state[ours(name)].shape)


def ucdr_tiny(**config) -> UCDRAdapter:
    """Our UCDR-Adapter on test-pros-tiny, holding the fixture's CLIP and method values."""
    backbone = pros_tiny_backbone()
    method = UCDRAdapter(backbone, EXPECTED["class_names"], list(range(len(oi.CLASS_NAMES))),
                         UCDRAdapterConfig(**config))
    mine = {**dict(method.named_parameters()), **dict(method.named_buffers())}
    official = oi.ucdr_own_names(EXPECTED["state_keys"])
    own = oi.weights({n: official_shape(n, mine) for n in official}, seed=50)
    with torch.no_grad():
        for name, value in own.items():
            try:
                mine[ours(name)].copy_(torch.from_numpy(value))
            except KeyError:  # layer_norm1 and the momentum copy's adapters: not built (docs/methods.md)
                pass
    return method


def inputs(seed: int = 95):
    images = torch.from_numpy(oi.images(oi.DEPRO_IMAGES, seed=seed, size=224))
    domains = torch.tensor([EXPECTED["domains"].index(d) for d in EXPECTED["inputs"]["domains"]])
    classes = torch.tensor([EXPECTED["class_names"].index(c) for c in EXPECTED["inputs"]["classes"]])
    return images, domains, classes


def test_text_prompts_equal_the_official_code():
    method = ucdr_tiny()
    assert method.text_prompts.ids.tolist() == EXPECTED["token_ids"]
    assert method.text_prompts.prefix_index.tolist() == EXPECTED["prefix_index"]
    with torch.no_grad():
        check(method.class_text_features(), EXPECTED["text_features"])
    sixteen = ucdr_tiny(n_ctx=16)
    assert sixteen.text_prompts.ids.tolist() == EXPECTED["token_ids_16"]
    assert sixteen.text_prompts.prefix_index.tolist() == EXPECTED["prefix_index_16"]


def test_sequences_query_features_and_test_embedding_equal_the_official_code():
    method = ucdr_tiny()
    images, domains, classes = inputs()
    with torch.no_grad():
        check(method.clip_sequence(images, method.domain_prompts[domains], method.class_prompts[classes]),
              EXPECTED["stage1_sequence"])
        check(method.features(images, domains, classes), EXPECTED["stage1_feature"])
        check(method.query(images), EXPECTED["generator_query"])
        dom, cls = method.generated_prompts(images)
        check(method.clip_sequence(images, dom, cls), EXPECTED["stage2_sequence"])
        method.begin_stage(ADAPTER)
        check(method.features(images, domains, classes), EXPECTED["stage2_feature"])
    check(method.embed_sketches(images), EXPECTED["test_embedding"])  # the empty mask: stage 2 = stage 4
    torch.testing.assert_close(method.embed_photos(images), method.embed_sketches(images))


def _stage_step(method, stage: str, number: int):
    optimizer = build_optimizer(method, TrainConfig(lr=EXPECTED["step_lr"], weight_decay=0.0))  # AdamW, no decay
    official = EXPECTED[f"stage{number}"]["optimizer"]
    assert (official["weight_decay"], official["eps"], tuple(official["betas"])) == (0.0, 1e-8, (0.9, 0.999))
    for group in optimizer.param_groups:  # the fixture's step raises eps on both sides
        group["eps"] = EXPECTED["step_eps"]
    return optimizer


def stage_one(method):
    """The fixture's two stage-1 steps, pausing (yielding the step's terms and fixture entry) after each
    forward pass ("loss"), backward pass ("grads") and optimiser step ("stepped")."""
    method.train()
    optimizer = _stage_step(method, PROMPTS, 1)
    for k, expected in enumerate(EXPECTED["stage1"]["steps"]):
        images, domains, classes = inputs(95 + k)
        optimizer.zero_grad()
        torch.manual_seed(EXPECTED["triplet_seeds"][k])
        terms = method.objective(images, domains, classes)
        yield "loss", terms, expected
        terms["loss"].backward()
        yield "grads", terms, expected
        optimizer.step()
        yield "stepped", terms, expected


def test_stage_one_trains_what_the_official_code_trains_over_two_steps():
    """CE + the random-sample triplet (its draws from the seeded global generator), the gradients (ctx and
    the ground-truth rows only), one Adam step each, the moving averages and the queues after each."""
    method = ucdr_tiny()
    params = dict(method.named_parameters())
    for phase, terms, expected in stage_one(method):
        if phase == "loss":
            assert float(terms["loss"].detach()) == pytest.approx(expected["loss"], abs=1e-5)
            assert (float(terms["cls"]), float(terms["triplet"])) == pytest.approx(
                (expected["ce"], expected["triplet"]), abs=1e-5)
        elif phase == "grads":
            for name, grad in expected["grads"].items():
                check(params[ours(name)].grad, grad)
            assert {n for n, p in params.items() if p.requires_grad} == {ours(n) for n in expected["grads"]}
        else:
            for name, value in expected["after_step"].items():
                check(params[ours(name)], value)
            buffers = dict(method.named_buffers())
            for name, value in expected["momentum"].items():
                check(buffers[ours(name)], value)
            assert {str(c): int(n) for c, n in enumerate(method.queue_lengths)} == expected["queue_lengths"]
    for c, entries in EXPECTED["stage1"]["queues_after"].items():
        check(method.queue[int(c), :len(entries)], [v for row in entries for v in row])


def test_stage_two_trains_the_adapters_only():
    """After the two stage-1 steps (as the fixture ran them), one stage-2 step: CE only, the six adapter-stage
    tensors get gradients and move, the text context and the tables do not."""
    method = ucdr_tiny()
    for _ in stage_one(method):
        pass
    method.begin_stage(ADAPTER)
    method.train()
    expected = EXPECTED["stage2"]["steps"][0]
    optimizer = _stage_step(method, ADAPTER, 2)
    images, domains, classes = inputs()
    queue = method.queue.clone()
    terms = method.objective(images, domains, classes)
    assert float(terms["loss"].detach()) == pytest.approx(expected["loss"], abs=1e-5) and "triplet" not in terms
    terms["loss"].backward()
    params = dict(method.named_parameters())
    for name, grad in expected["grads"].items():
        check(params[ours(name)].grad, grad)
    assert {n for n, p in params.items() if p.requires_grad} == {ours(n) for n in expected["grads"]}
    optimizer.step()
    for name, value in expected["after_step"].items():
        check(params[ours(name)], value)
    torch.testing.assert_close(method.queue, queue)  # no loss reads the queues after stage 1: not filled


def test_stage_two_rate_is_the_official_decay():
    f = lr_lambda(TrainConfig(lr=1e-4, schedule="exponential-epoch"), steps_per_epoch=2)
    np.testing.assert_allclose([1e-4 * f(2 * e) for e in range(10)], EXPECTED["stage2_lr"], rtol=1e-12)


@pytest.mark.parametrize("dataset,classes,n_ctx,domains", [("sketchy", 104, 8, 0), ("tuberlin", 220, 8, 0),
                                                            ("domainnet", 245, 16, 5)])
def test_trainable_names_and_counts_at_vit_b32(dataset, classes, n_ctx, domains):
    """Stage 1: 85,504 on Sketchy, 174,592 on TU-Berlin, 200,192 on DomainNet (five domain tokens, 245
    classes, 16 context vectors); stage 2: 2,167,296 on every dataset (field note §8)."""
    from sbir_bench.sizing import meta_method
    method = meta_method("ucdr-adapter", {"n_ctx": n_ctx, "domains": domains}, "ViT-B-32",
                         [f"c{i}" for i in range(classes)], list(range(classes)))
    for number, stage in ((1, PROMPTS), (2, ADAPTER)):
        expected = EXPECTED[f"trainable_{dataset}_stage{number}"]
        method.begin_stage(stage)
        assert {n for n, p in method.named_parameters() if p.requires_grad} == {ours(n) for n in expected["names"]}
        assert method.n_trainable() == expected["count"]


def test_the_triplet_draws_in_the_official_order_and_skips_what_it_cannot_pair():
    """Per anchor: p1, n1, p2, n2 from the global generator; an anchor whose class has no entry draws nothing;
    negatives run over the other classes in class order, oldest entry first."""
    queue = torch.zeros(3, 4, 2)
    queue[0, :2] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue[2, :1] = torch.tensor([[-1.0, 0.0]])
    lengths = torch.tensor([2, 0, 1])
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    torch.manual_seed(5)
    loss = random_sample_triplet(anchors, torch.tensor([0, 1, 2]), queue, lengths, 0.2)
    torch.manual_seed(5)
    draws = [int(torch.randint(0, n, (1,))) for n in (2, 1, 2, 1, 1, 2, 1, 2)]  # anchors 0 and 2; 1 skipped
    flat = [queue[0, 0], queue[0, 1], queue[2, 0]]
    d = lambda a, b: float(torch.linalg.vector_norm(a - b))  # noqa: E731
    a0 = [0.5 * max(0.0, d(anchors[0], flat[draws[i]]) - d(anchors[0], flat[2]) + 0.2) for i in (0, 2)]
    a2 = [0.5 * max(0.0, d(anchors[2], flat[2]) - d(anchors[2], flat[draws[i]]) + 0.2) for i in (5, 7)]
    assert float(loss) == pytest.approx((sum(a0) + sum(a2)) / 2, abs=1e-6)


def test_a_break_turns_the_fixture_comparisons_red():
    """Scaled attention scores change the generated prompts; training the text projection (ProS's choice)
    changes the stage-1 trainable set; a queue that keeps the newest entries first changes the triplet."""
    method = ucdr_tiny(attention_temperature=0.75 * 768 ** 0.5)
    images, domains, classes = inputs()
    with torch.no_grad(), pytest.raises(AssertionError):
        check(method.embed_sketches(images), EXPECTED["test_embedding"])
    method = ucdr_tiny()
    method.train()
    torch.manual_seed(EXPECTED["triplet_seeds"][0])
    original = method.enqueue
    method.enqueue = lambda f, y: original(f.flip(0), y.flip(0))
    terms = method.objective(images, domains, classes)
    assert float(terms["triplet"]) != pytest.approx(EXPECTED["stage1"]["steps"][0]["triplet"], abs=1e-4)


def test_checkpoints_hold_the_tables_the_momentum_branch_and_the_queues():
    method = ucdr_tiny()
    method.begin_stage(ADAPTER)
    state = method.trainable_state()
    assert {"domain_prompts", "class_prompts", "ctx", "momentum_class_prompts", "queue", "queue_lengths",
            "attention.W_image.weight"} <= set(state)
    assert not any(k.startswith("clip.") for k in state)


SHORT = ["--epochs", "2", "--batch-size", "4", "--set", "train.steps_per_epoch=2", "--set", "train.val_every=0",
         "--set", "method_config.prompts_epochs=2", "--set", "method_config.prompts_batch_size=4",
         "--set", "eval.save_embeddings=false", "--quiet"]


@pytest.mark.parametrize("call,stage,epoch", [(4, PROMPTS, 1), pytest.param(7, ADAPTER, 1, marks=pytest.mark.slow)])
def test_interrupted_in_either_stage_then_resumed_is_bit_identical(tmp_path, monkeypatch, call, stage, epoch):
    """Ctrl-C in the second epoch of stage 1 (call 4: its queues, moving averages and triplet draws must
    come back) or of stage 2 (call 7), then --resume: the same model, queues, history and test metrics as a
    straight run."""
    from interrupts import interrupted_then_resumed
    done = interrupted_then_resumed(tmp_path, monkeypatch, UCDRAdapter, ["run", "ucdr-adapter", *SHORT], call, stage,
                                    epoch, ADAPTER)
    assert int(done.reference["trainable"]["queue_lengths"].sum()) > 0  # stage 1 filled the queues
    done.assert_same_model()
    a, b = done.straight_record, done.resumed_record
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]
    assert a["metrics"] == b["metrics"]
