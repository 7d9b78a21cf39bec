"""One training step of the default models on random tensors in NCHW / channels-last, float32 / bf16
autocast, on the CPU with one thread (docs/BENCHMARKS.md §7 (e)). Usage: python scripts/cpu_layout_bench.py cls|seg"""
import time, torch, timm, segmentation_models_pytorch as smp, sys
torch.set_num_threads(1)
torch.manual_seed(0)
def bench(model, x, y, lossf, cl, bf16, steps=15):
    m = model
    if cl: m = m.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m(x)
        loss = lossf(out.float(), y); loss.backward(); opt.step()
    for _ in range(3): step()
    t = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t) / steps
which = sys.argv[1]
if which == "cls":
    mk = lambda: timm.create_model("resnet10t", num_classes=7)
    x = torch.randn(32, 3, 64, 64); y = torch.randint(0, 7, (32,))
else:
    mk = lambda: smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=[64,32,16], classes=7)
    x = torch.randn(16, 3, 64, 64); y = torch.randint(0, 7, (16, 64, 64))
lf = torch.nn.CrossEntropyLoss()
res = {}
for r in range(2):
    for cl, bf in [(False, False), (True, False), (False, True), (True, True)]:
        torch.manual_seed(0); m = mk().train()
        res.setdefault((cl, bf), []).append(bench(m, x, y, lf, cl, bf))
for k, v in res.items(): print(which, "channels_last=%s bf16=%s" % k, " ".join("%.1f ms" % (1000*t) for t in v))
