import torch

import prunekit


def test_build_info_describes_this_build():
    info = prunekit.build_info()
    assert info["version"] == prunekit.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda_built"], bool)
    assert isinstance(info["cuda_archs"], list)
    assert info["cuda_built"] == bool(info["cuda_archs"])
    assert "scalar" in info["cpu_isas_compiled"]
    assert info["cpu_isa_selected"] in info["cpu_isas_compiled"]
    assert info["cpu_isas_runnable"][0] == "scalar"
    assert set(info["cpu_isas_runnable"]) <= set(info["cpu_isas_compiled"])
    assert info["cpu_isa_selected"] == info["cpu_isas_runnable"][-1]
    assert info["cpu_isa_detected"] in ("scalar", "avx2", "avx512", "neon")
    # gathers only in the AVX-512 GEMV, and only where they are fast (not on AMD)
    assert info["cpu_csr16_gemv"] in ("gather", "loads")
    if info["cpu_csr16_gemv"] == "gather":
        assert info["cpu_isa_selected"] == "avx512"
    # the bf16 GEMV's rows: 4 with AMX past it, 8 without (in chunks of 4), 0 without the GEMV
    expected_rows = 0 if info["cpu_bf16_gemv"] is None else 4 if info["cpu_bf16_spmm"] == "amx" else 8
    assert info["cpu_bf16_gemv_max_rows"] == expected_rows


def test_ops_are_registered_under_torch_ops():
    for name in ("nm_mask", "compress_24", "decompress_24"):
        assert hasattr(torch.ops.prunekit, name)
