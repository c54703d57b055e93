"""Named weight shapes (out_features, in_features) of real models, shared by the benchmarks."""

LLAMA_7B = {
    "llama7b.q_proj": (4096, 4096),
    "llama7b.up_proj": (11008, 4096),
    "llama7b.down_proj": (4096, 11008),
}
LLAMA_70B = {"llama70b.o_proj": (8192, 8192)}
# MobileNet-v1 1x1 (pointwise) convolutions: (out_channels, in_channels, spatial side).
MOBILENET_V1_POINTWISE = {
    "mobilenet_v1.pw2": (128, 64, 112),
    "mobilenet_v1.pw4": (256, 128, 56),
    "mobilenet_v1.pw6": (512, 256, 28),
    "mobilenet_v1.pw8": (512, 512, 14),
    "mobilenet_v1.pw13": (1024, 1024, 7),
}
