"""ce-inspect inside the data engines people already run: ``integrations.ray.ScoreBatch`` scores a Ray Data
data set with ``map_batches``, one model per actor, through the one data-set runner (``dataset``);
``integrations.ray.DiffBatch`` compares two models per actor there as ``diff DATA`` does.

Nothing here is imported by ``import ce_inspect``: ``from ce_inspect.integrations.ray import ScoreBatch, DiffBatch``.
"""
