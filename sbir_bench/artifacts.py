"""Trained models as artifacts: train once, evaluate anywhere, load from Python.

Every trained run writes, next to its record, ``<run-id>/model.safetensors`` (the method's trained
parameters and buffers only, never the backbone: a SpLIP on ViT-B-32 is about 10 MB) and
``<run-id>/model.json`` (what is needed to rebuild it and to know what it has seen: method and its
resolved config, backbone name and weights with their SHA-256, preprocessing, the class vocabulary
and seen classes it trained on, the training data's fingerprint, the run id). Loading reads
safetensors and JSON only: no pickled code ever runs.

``sbir-bench eval --model RUN|PATH --dataset D --setting S`` embeds and scores any task with an
artifact (cross-dataset tables, another split or setting); ``reproduce`` evaluates an existing
artifact instead of training again when a cell's training is identical (GZS after ZS);
:func:`load_model` gives Python users ``embed_sketches`` / ``embed_photos``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save

from .config import from_dict
from .data.classnames import class_key
from .data.images import load_rgb
from .errors import ConfigError, DataError, WeightsError
from .fileio import atomic_write_bytes, atomic_write_json, file_sha256
from .log import get_logger
from .methods import get_method
from .methods.base import ImagePipeline, image_pipeline
from .models import load_backbone
from .records import beside_record, package_versions

log = get_logger(__name__)
FORMAT = "sbir-bench/model"
FORMAT_VERSION = 2  # 2: model.json carries meta_sha256, its own checksum (version 1 artifacts still load)
MODEL_JSON, MODEL_TENSORS = "model.json", "model.safetensors"
RUN_FOLDER = re.compile(r"_\d{8}-\d{6}-[0-9a-f]{6}$")  # a run's folder: <run name>_<date>-<time>-<suffix> (new_run_id)
REQUIRED = ("format", "format_version", "method", "method_config", "config", "backbone", "preprocess",
            "class_names", "seen", "training", "run_id", "tensors_sha256")


@dataclass
class Artifact:
    """A loaded artifact: its description (``model.json``), trained tensors, and where it lies."""

    meta: Dict[str, Any]
    state: Dict[str, torch.Tensor]
    path: Path  # the model.json

    @property
    def seen_names(self) -> List[str]:
        return [self.meta["class_names"][i] for i in self.meta["seen"]]


def save_artifact(folder: Path, method, cfg_tree: Dict[str, Any], backbone, class_names: Sequence[str],
                  seen: Sequence[int], training: Dict[str, Any], run_id: str, identity: str,
                  weights_sha256: Optional[str]) -> Path:
    """Write ``model.safetensors`` then ``model.json`` (atomically, the description last) into ``folder``.

    ``weights_sha256``: the backbone file's hash, as the run record already computed it (a ViT's
    weights are hundreds of MB: hashed once per run)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in method.trainable_state().items()}
    data = save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    atomic_write_bytes(folder / MODEL_TENSORS, data)
    method_cfg = asdict(method.config) if is_dataclass(method.config) else dict(method.config or {})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "method": cfg_tree["method"],
            "variant": cfg_tree.get("variant", ""), "method_config": method_cfg, "config": cfg_tree,
            "backbone": {"name": backbone.name, "pretrained": backbone.pretrained,
                         "weights_tag": backbone.weights_tag,
                         "weights_sha256": weights_sha256},
            "preprocess": backbone.preprocess_cfg, "image_size": backbone.image_size,
            "class_names": list(class_names), "seen": list(seen), "training": training, "run_id": run_id,
            "training_identity": identity, "tensors_sha256": file_sha256(folder / MODEL_TENSORS)}
    meta["packages"] = package_versions()
    meta["meta_sha256"] = meta_sha256(meta)
    return atomic_write_json(folder / MODEL_JSON, meta)


def meta_sha256(meta: Dict[str, Any]) -> str:
    """SHA-256 of model.json's content without this field: the class list, seen classes and config
    are checked like the tensors, so an edited vocabulary cannot hide a seen class from the leakage check."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def artifact_path(where: str | Path) -> Path:
    """The ``model.json`` that ``where`` names: a record (its ``model`` key), a run folder, or the file."""
    p = Path(where)
    if p.is_dir():
        p = p / MODEL_JSON
    elif p.suffix == ".safetensors":
        p = p.with_name(MODEL_JSON)
    elif p.suffix == ".json" and p.name != MODEL_JSON and p.is_file():
        try:
            record = json.loads(p.read_text())
        except (OSError, ValueError):
            raise WeightsError(f"{p} is not a readable run record or model artifact") from None
        if not isinstance(record, dict) or not record.get("model"):
            raise WeightsError(f"run record {p} has no model artifact (zero-shot runs train nothing; runs before "
                               f"sbir-bench saved artifacts have none)")
        p = Path(beside_record(p, record["model"]))
    if not p.is_file():
        raise WeightsError(f"model artifact not found: {p}")
    return p


def load_artifact(where: str | Path) -> Artifact:
    """Read and check an artifact; a damaged, foreign or newer one is a one-line :class:`WeightsError`."""
    path = artifact_path(where)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise WeightsError(f"model artifact {path} is unreadable (truncated or not JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not an sbir-bench model artifact")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise WeightsError(f"model artifact {path} has format version {meta.get('format_version')!r}; this "
                           f"sbir-bench reads up to {FORMAT_VERSION}: upgrade sbir-bench")
    missing = [k for k in REQUIRED + (("meta_sha256",) if meta["format_version"] >= 2 else ()) if k not in meta]
    if missing:
        raise WeightsError(f"model artifact {path} lacks {', '.join(missing)}")
    if meta["format_version"] >= 2 and meta_sha256(meta) != meta["meta_sha256"]:
        raise WeightsError(f"model artifact {path} was edited after training (its SHA-256 differs): its class list, "
                           f"method or config cannot be trusted; use the artifact as the run wrote it")
    tensors = path.with_name(MODEL_TENSORS)
    if not tensors.is_file() or file_sha256(tensors) != meta["tensors_sha256"]:
        raise WeightsError(f"model artifact {path}: {tensors.name} is missing or damaged (SHA-256 differs)")
    if RUN_FOLDER.search(path.parent.name) and path.parent.name != meta["run_id"]:  # copied into another run's
        log.warning(f"model artifact {path} is run {meta['run_id']}'s, not {path.parent.name}'s (copied or renamed): "
                    f"it is evaluated and recorded as {meta['run_id']}")
    return Artifact(meta, load_file(str(tensors)), path)


def build_method(artifact: Artifact, backbone, device: torch.device | str = "cpu"):
    """The trained method on ``backbone``: built with its training vocabulary, then its tensors loaded."""
    try:
        cls = get_method(artifact.meta["method"])
    except ConfigError as exc:  # a plug-in that is not installed here, or an artifact of another version
        raise WeightsError(f"model artifact {artifact.path} needs method {artifact.meta['method']!r}: {exc}") from None
    cfg = from_dict(cls.config_class, artifact.meta["method_config"], f"method_config ({artifact.meta['method']})")
    torch.manual_seed(0)  # the initial values are overwritten; this only makes construction repeatable
    method = cls(backbone, artifact.meta["class_names"], artifact.meta["seen"], cfg)
    try:
        method.load_trainable_state(artifact.state)
    except (KeyError, RuntimeError) as exc:
        raise WeightsError(f"model artifact {artifact.path} does not fit {artifact.meta['method']} on "
                           f"{backbone.name}: {str(exc).splitlines()[0][:160]}") from None
    return method.to(device).eval()


def load_backbone_for(artifact: Artifact, pretrained: Optional[str] = None, device: torch.device | str = "cpu"):
    """The artifact's backbone (``pretrained`` overrides where its weights are, e.g. another path on
    another machine); weights whose SHA-256 differs from the ones it trained on are refused."""
    want = artifact.meta["backbone"]
    backbone = load_backbone(want["name"], pretrained or want["pretrained"], device=device)
    have = file_sha256(backbone.weights_file) if backbone.weights_file else None
    if want.get("weights_sha256") and have != want["weights_sha256"]:
        raise WeightsError(f"model artifact {artifact.path} was trained on {want['name']} weights with SHA-256 "
                           f"{want['weights_sha256'][:12]}..., not {str(have)[:12]}...; pass --pretrained with "
                           f"those weights")
    return backbone


def check_no_leakage(artifact: Artifact, test_classes: Sequence[str], allow: bool) -> List[str]:
    """Test classes that the model trained on (matched with the one class-name rule); an error unless
    ``allow``, in which case they are returned for the record to say so."""
    trained = {class_key(n) for n in artifact.seen_names}
    overlap = sorted({c for c in test_classes if class_key(c) in trained})
    if overlap and not allow:
        shown = ", ".join(overlap[:8]) + (f" and {len(overlap) - 8} more" if len(overlap) > 8 else "")
        raise DataError(f"{len(overlap)} test class(es) were seen in training by this model ({shown}): a zero-shot "
                        f"number would be wrong; pass --allow-seen-classes to evaluate anyway (the record says so)")
    return overlap


class TrainedModel:
    """A trained method with its own preprocessing, for Python users (see :func:`load_model`)."""

    def __init__(self, method, backbone, images: ImagePipeline, device: torch.device) -> None:
        self.method, self.backbone, self.images, self.device = method, backbone, images, device

    @property
    def transform(self):
        """The photos' evaluation transform (sketches: ``images.sketch_eval``)."""
        return self.images.eval

    def _batch(self, images, transform) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images.to(self.device)
        tensors = []
        for im in images:
            if isinstance(im, (str, Path)):
                loaded = load_rgb(str(im))
                if loaded is None:
                    raise DataError(f"unreadable image {im}")
                im = loaded
            tensors.append(transform(im))
        return torch.stack(tensors).to(self.device)

    @torch.no_grad()
    def embed_sketches(self, images) -> torch.Tensor:
        """Embeddings of sketches, as ``eval --model`` embeds them: a preprocessed batch, or PIL images /
        paths (prepared with the sketches' own transform, e.g. ProS's colour inversion)."""
        return self.method.embed_sketches(self._batch(images, self.images.sketch_eval)).float().cpu()

    @torch.no_grad()
    def embed_photos(self, images) -> torch.Tensor:
        """Embeddings of photos, as ``eval --model`` embeds them: a preprocessed batch, or PIL images / paths."""
        return self.method.embed_photos(self._batch(images, self.images.eval)).float().cpu()


def load_model(where: str | Path, pretrained: Optional[str] = None, device: str = "cpu",
               class_names: Optional[Sequence[str]] = None, dataset: Optional[str] = None) -> TrainedModel:
    """Load a trained model from a record, run folder or ``model.json``.

    >>> m = load_model("results/runs/<run-id>")           # doctest: +SKIP
    >>> m.embed_sketches([sketch_pil]) @ m.embed_photos([photo_pil]).T   # doctest: +SKIP

    ``class_names``: the gallery's vocabulary, for methods whose embedding uses class texts (CoOp's
    fused retrieval); default the vocabulary it trained on. ``dataset``: whose images these are, for
    methods that prepare a dataset's sketches their own way (ProS inverts Sketchy's and QuickDraw's);
    default the dataset it trained on. The transforms come from the builder a run and ``eval --model``
    use (:func:`~sbir_bench.methods.base.image_pipeline`), so the embeddings are theirs.
    """
    artifact = load_artifact(where)
    dev = torch.device(device)
    backbone = load_backbone_for(artifact, pretrained, dev)
    method = build_method(artifact, backbone, dev)
    method.prepare_eval(list(class_names or artifact.meta["class_names"]))
    data = artifact.meta["config"]["data"]
    images = image_pipeline(method, backbone.preprocess_cfg, dataset or artifact.meta["training"]["dataset"],
                            data.get("image_size"), data.get("crop_scale_min", 1.0))
    return TrainedModel(method, backbone, images, dev)


def artifact_run_id(path: Path) -> str:
    """The run that trained the artifact at ``path`` (its ``model.json``), whatever folder it lies in."""
    try:
        return str(json.loads(Path(path).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return Path(path).parent.name


def find_reusable(folders: Sequence[Path], identity: str) -> Optional[Path]:
    """An artifact in one of ``folders`` (run folders inside) whose training is ``identity``
    (:func:`~sbir_bench.runner.training_identity`); the first folder is searched first."""
    for path in [p for folder in folders for p in sorted(Path(folder).glob(f"*/{MODEL_JSON}"))]:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("training_identity") == identity:
            return path
    return None
