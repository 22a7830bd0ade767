"""Testing helpers shipped with sbir-bench, as ``numpy.testing`` and ``torch.testing`` are: hollow copies of
the real benchmarks in every public folder layout (:mod:`.hollow_copies`), for the project's tests and
benchmarks and for a user's own (a plug-in dataset's loader meets the real names and counts)."""
