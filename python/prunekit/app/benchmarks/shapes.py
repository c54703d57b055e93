"""Named weight shapes of real models, shared by the benchmarks (the one place they live)."""

# Linear layers: (out_features, in_features).
LLAMA_7B = {
    "llama7b.q_proj": (4096, 4096),
    "llama7b.up_proj": (11008, 4096),
    "llama7b.down_proj": (4096, 11008),
}
LLAMA_70B = {"llama70b.o_proj": (8192, 8192)}
# all-MiniLM-L6-v2 (the demo's model): attention projections and the feed-forward pair.
MINILM_L6 = {
    "minilm.attention": (384, 384),
    "minilm.intermediate": (1536, 384),
    "minilm.output": (384, 1536),
}
# A small shape for --quick runs.
SMALL_LINEAR = {"small": (512, 1024)}
# MobileNet-v1 1x1 (pointwise) convolutions: (out_channels, in_channels, spatial side).
MOBILENET_V1_POINTWISE = {
    "mobilenet_v1.pw2": (128, 64, 112),
    "mobilenet_v1.pw4": (256, 128, 56),
    "mobilenet_v1.pw6": (512, 256, 28),
    "mobilenet_v1.pw8": (512, 512, 14),
    "mobilenet_v1.pw13": (1024, 1024, 7),
}
# The two MobileNet layers a --quick conv run times.
MOBILENET_V1_POINTWISE_QUICK = {k: MOBILENET_V1_POINTWISE[k] for k in ("mobilenet_v1.pw4", "mobilenet_v1.pw8")}
