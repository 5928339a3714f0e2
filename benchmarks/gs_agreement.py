"""The plain-PyTorch rasteriser against gsplat on the same Gaussians: PSNR, SSIM and the largest
difference of the images, and the time of each renderer; also the C++ CPU rasteriser's PSNR against
gsplat (``cpp_psnr``). Needs a GPU and gsplat.

    python benchmarks/gs_agreement.py --json benchmarks/results/gs_agreement_h100.json

Scenes: random Gaussians of mixed sizes and opacities with degree-1 SH colours (as
tests/test_gpu.py), and the splats of procedural scenes (one per valid pixel, splats_from_points)
seen from the source camera and from cameras moved sideways by 5% and 25% of the median depth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, size_arg, write_report  # noqa: E402

from infinidepth.data.procedural import generate_scene, render  # noqa: E402
from infinidepth.gs import Gaussians, render_cpp, render_gsplat, render_torch, splats_from_points  # noqa: E402
from infinidepth.gs.metrics import psnr, ssim  # noqa: E402
from infinidepth.ops import available_backends, grid_coords  # noqa: E402
from infinidepth.sampling import backproject  # noqa: E402


def random_scene(n: int, seed: int) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.5, 1.0, 1.0]) + torch.tensor([0, 0, 5.0])
    return Gaussians(means, torch.rand(n, 3, generator=g) * 0.1 + 0.01,
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, generator=g) * 0.9 + 0.05, torch.randn(n, 3, 4, generator=g) * 0.5)


def on(g: Gaussians, device) -> Gaussians:
    return Gaussians(*(t.to(device) for t in (g.means, g.scales, g.rotations, g.opacities, g.sh)))


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def compare(name: str, g: Gaussians, w2c, K, size) -> dict:
    cuda = on(g, "cuda")
    render_gsplat(cuda, w2c, K, size)  # warm-up of both: kernel loads and first-call costs stay out of the times
    render_torch(cuda, w2c.cuda(), K.cuda(), size)
    theirs, t_gsplat = timed(lambda: render_gsplat(cuda, w2c, K, size))
    ours, t_torch = timed(lambda: render_torch(cuda, w2c.cuda(), K.cuda(), size))
    a, b = ours["rgb"].clamp(0, 1).cpu(), theirs["rgb"].clamp(0, 1).cpu()
    row = {"scene": name, "gaussians": len(g.means), "size": list(size), "psnr": psnr(a, b), "ssim": ssim(a, b),
           "max_abs_rgb": (a - b).abs().max().item(),
           "max_abs_alpha": (ours["alpha"].cpu() - theirs["alpha"].cpu()).abs().max().item(),
           "torch_ms": t_torch * 1e3, "gsplat_ms": t_gsplat * 1e3}
    if "cpp" in available_backends(torch.device("cpu")):  # the CPU's default renderer, on the same scene
        cpu = render_cpp(g, w2c, K, size)["rgb"].clamp(0, 1)
        row.update(cpp_psnr=psnr(cpu, b), cpp_max_abs_rgb=(cpu - b).abs().max().item())
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", type=int, default=4, help="procedural scenes")
    ap.add_argument("--size", type=size_arg(), default="240x320", help="HxW of the images")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gs_agreement.py needs a GPU (gsplat renders on CUDA only)")
    H, W = args.size
    K = torch.tensor([[200.0 * W / 320, 0, W / 2], [0, 200.0 * W / 320, H / 2], [0, 0, 1]])
    rows = [compare(f"random-{n}", random_scene(n, n), torch.eye(4), K, (H, W)) for n in (2000, 50_000)]
    for seed in range(300_000, 300_000 + args.scenes):
        scene = generate_scene(seed)
        src = render(scene, (H, W))
        Ks = src.intrinsics.float()
        keep = src.valid.reshape(-1)
        coords, depth = grid_coords(H, W)[0][keep], src.depth.reshape(-1)[keep]
        pts = backproject(depth[None], coords[None], Ks[None], (H, W))[0]
        splats = splats_from_points(pts, src.rgb.reshape(-1, 3)[keep])
        median = float(depth.median())
        for shift in (0.0, 0.05, 0.25):
            w2c = torch.eye(4)
            w2c[0, 3] = -shift * median  # the camera moved right by shift x median depth
            rows.append(compare(f"procedural-{seed}-shift{shift}", splats, w2c, Ks, (H, W)))
    for r in rows:
        print(f"{r['scene']:>28} {r['gaussians']:>7} Gaussians  PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.4f}  "
              f"max|d rgb| {r['max_abs_rgb']:.3f}  torch {r['torch_ms']:8.1f} ms  gsplat {r['gsplat_ms']:6.2f} ms"
              + (f"  C++ (CPU) PSNR {r['cpp_psnr']:6.2f} dB" if "cpp_psnr" in r else ""))
    psnrs = [r["psnr"] for r in rows]
    report = {"benchmark": "PyTorch rasteriser vs gsplat", "device": device_name(torch.device("cuda")),
              "torch": torch.__version__, "min_psnr": float(np.min(psnrs)), "median_psnr": float(np.median(psnrs)),
              "rows": rows}
    if all("cpp_psnr" in r for r in rows):
        report["min_cpp_psnr"] = float(np.min([r["cpp_psnr"] for r in rows]))
    print(f"PSNR between the renderers: min {report['min_psnr']:.2f} dB, median {report['median_psnr']:.2f} dB"
          + (f"; C++ (CPU) against gsplat: min {report['min_cpp_psnr']:.2f} dB" if "min_cpp_psnr" in report else ""))
    write_report(args.json, report, None if argv is None else [__file__, *argv])


if __name__ == "__main__":
    main()
