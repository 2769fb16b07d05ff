"""Peak memory of decoding one large tile: the whole-image float32 decode (``decode_image``) against the tile
decode (``decode_tile``: pixel count from the header, reduced decode towards the model's input side).

    python bench/decode_memory.py [--sizes 2000 4000 6000] [--input-side 512]

Each decode runs in a fresh process that reads the file first, so what is measured is the growth of the peak
resident set (``VmHWM``) over the read: PNG RGB 8-bit, PNG grey 16-bit and JPEG RGB at each size. Prints a
Markdown table and the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

# VmHWM, not getrusage's ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across exec on Linux).
_CHILD = """
import sys
from dinoseg_core.io import imageio

def peak_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

data = open(sys.argv[1], "rb").read()
before = peak_kb()
if sys.argv[2] == "decode_image":
    image = imageio.decode_image(data, sys.argv[1])
else:
    image, _ = imageio.decode_tile(data, sys.argv[1], input_side=int(sys.argv[3]), max_pixels=2**30)
print((peak_kb() - before) / 1024, image.shape[0], image.shape[1])
"""


def _image(kind: str, side: int) -> Image.Image:
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1),
                    np.full((side, side), 128, np.float32)], -1).astype(np.uint8)
    if kind == "png-grey16":
        return Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    return Image.fromarray(rgb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 6000])
    parser.add_argument("--input-side", type=int, default=512)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    print("| file | pixels | decode_image peak growth (MB) | decode_tile peak growth (MB) | decode_tile shape |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for side in args.sizes:
            for kind in ("png-rgb8", "png-grey16", "jpeg-rgb8"):
                path = os.path.join(folder, f"{kind}-{side}." + ("jpg" if kind.startswith("jpeg") else "png"))
                _image(kind, side).save(path, **({"quality": 90} if kind.startswith("jpeg") else {"compress_level": 1}))
                grown = {}
                for how in ("decode_image", "decode_tile"):
                    done = subprocess.run([sys.executable, "-c", _CHILD, path, how, str(args.input_side)],
                                          capture_output=True, text=True, check=True)
                    mb, h, w = done.stdout.split()
                    grown[how] = (float(mb), f"{h}x{w}")
                print(f"| {kind} | {side}x{side} | {grown['decode_image'][0]:.0f} | {grown['decode_tile'][0]:.0f} | "
                      f"{grown['decode_tile'][1]} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
