"""The preprocessing cache's content check: what the checksum recorded at build and compared on
every open costs, against the build it protects.

    python bench/cache_check.py [--sets 8000x48x1.0 2000x224] [--repeats 3]
                                [--output bench/results/cache_check.json]

Each set is IMAGESxSIDE[xSCALE]: that many drawn images (data/synthetic.py) at SIDE px, cached for
training as a tiny ViT of that side stores them (SIDE x SCALE, 8/7 by default: 256 px for 224).
8000x48x1.0 is the quickstart's cache (configs/quickstart.yaml: its three splits hold the same 8000
images at 48 px). For each set it prints, median (min-max) over --repeats:
  - the build (decode, write, checksum, fsync), alternating with a build whose fsync is skipped
    (the difference is what flushing to the disk costs);
  - the check a run's open does (storage.checksum of every cache file: XXH3-64 over a memory
    map), with the files in memory (as after a build, or a run minutes earlier) and evicted from
    memory first (posix_fadvise DONTNEED: read from the disk), each as seconds and as a share of
    the build;
  - the whole reuse (build_or_load finding the cache), with and without the check;
  - candidate checksums over the same bytes in memory, GB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import clocked, median_range, write_json  # noqa: E402
from facemask.config.schema import ModelConfig  # noqa: E402
from facemask.data import storage  # noqa: E402
from facemask.data.synthetic import synthetic_dataset  # noqa: E402
from facemask.pipeline import cache  # noqa: E402
from facemask.pipeline.processor import load_image_processor  # noqa: E402


def spread(values) -> str:
    return median_range(values, 3)


def evict(files) -> None:
    """The files' pages dropped from memory (clean pages: they were flushed at build)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def hash_speeds(files) -> dict:
    """GB/s of each candidate checksum over the cache's bytes held in memory (no reading)."""
    import xxhash

    data = b"".join(Path(p).read_bytes() for p in files)
    view = memoryview(data)
    found = {"xxh3_64 (xxhash, chosen)": lambda: xxhash.xxh3_64(view).digest(),
             "crc32 (zlib)": lambda: zlib.crc32(view), "adler32 (zlib)": lambda: zlib.adler32(view),
             "sha256": lambda: hashlib.sha256(view).digest(),
             "blake2b": lambda: hashlib.blake2b(view).digest(), "md5": lambda: hashlib.md5(view).digest()}
    speeds = {}
    for name, fn in found.items():
        best = min(clocked(fn)[0] for _ in range(3))
        speeds[name] = len(data) / best / 1e9
    return speeds


def measure(images: int, side: int, scale: float, repeats: int, work: Path) -> dict:
    processor = load_image_processor(ModelConfig(from_config={"model_type": "vit", "image_size": side}))
    spec = cache.CacheSpec.for_split(processor, train=True, scale=scale)
    draw_s, ds = clocked(synthetic_dataset, images, side, 0)
    ds = ds.cast_column("image", cache.datasets.Image(decode=False))
    digest = storage.images_digest(ds, "image")

    def build(root: Path, sync: bool) -> tuple[float, Path]:
        shutil.rmtree(root, ignore_errors=True)
        with mock.patch.object(storage.os, "fsync", os.fsync if sync else (lambda fd: None)):
            seconds, (_, report) = clocked(cache.build_or_load, ds, "train", "image", "label", spec, processor, root,
                                         None, digest)
        assert not report.reused
        return seconds, Path(report.path)

    built, unsynced, hot, cold, reuse, reuse_unchecked = [], [], [], [], [], []
    for _ in range(repeats):
        seconds, folder = build(work / "synced", True)
        built.append(seconds)
        unsynced.append(build(work / "unsynced", False)[0])
        record = json.loads((folder / "cache.json").read_text())
        recorded = {name: entry["xxh3_64"] for name, entry in record["files"].items()}
        files = [folder / name for name in recorded]
        hot.append(clocked(storage.check_checksums, folder, recorded)[0])
        evict(files)
        cold.append(clocked(storage.check_checksums, folder, recorded)[0])
        seconds, (_, report) = clocked(cache.build_or_load, ds, "train", "image", "label", spec, processor,
                                     work / "synced", None, digest)
        assert report.reused
        reuse.append(seconds)
        with mock.patch.object(cache, "check_checksums", lambda folder, recorded: None):
            reuse_unchecked.append(clocked(cache.build_or_load, ds, "train", "image", "label", spec, processor,
                                         work / "synced", None, digest)[0])
    size = sum(p.stat().st_size for p in files)
    speeds = hash_speeds(files)
    shutil.rmtree(work / "synced", ignore_errors=True)
    shutil.rmtree(work / "unsynced", ignore_errors=True)
    share = lambda check: [c / b for c, b in zip(check, built)]  # noqa: E731
    return {"images": images, "side": spec.side, "cache_mb": size / 1e6, "files": len(files), "draw_s": draw_s,
            "build_s": built, "build_without_fsync_s": unsynced, "check_in_memory_s": hot, "check_from_disk_s": cold,
            "check_in_memory_share_of_build": share(hot), "check_from_disk_share_of_build": share(cold),
            "reuse_s": reuse, "reuse_without_check_s": reuse_unchecked, "checksum_gb_per_s": speeds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["8000x48x1.0", "2000x224"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "cache_check.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cache-check-", dir=os.environ.get("CACHE_CHECK_DIR")) as work:
        for item in args.sets:
            images, side, *scale = item.split("x")
            row = measure(int(images), int(side), float(scale[0]) if scale else cache.DEFAULT_SCALE, args.repeats,
                          Path(work))
            rows.append(row)
            print(f"\n{row['images']} images cached at {row['side']} px: {row['cache_mb']:.1f} MB in {row['files']} "
                  f"file(s); seconds, median (min-max) over {args.repeats} repeats")
            print(f"  build (decode, write, checksum, fsync)  {spread(row['build_s'])}")
            print(f"  build without fsync                     {spread(row['build_without_fsync_s'])}")
            print(f"  check on open, file in memory           {spread(row['check_in_memory_s'])}"
                  f"   = {spread(row['check_in_memory_share_of_build'])} of the build")
            print(f"  check on open, file read from the disk  {spread(row['check_from_disk_s'])}"
                  f"   = {spread(row['check_from_disk_share_of_build'])} of the build")
            print(f"  reuse (open), with the check            {spread(row['reuse_s'])}")
            print(f"  reuse (open), without the check         {spread(row['reuse_without_check_s'])}")
            print("  checksums over the cache's bytes in memory, GB/s: "
                  + ", ".join(f"{name} {speed:.2f}" for name, speed in row["checksum_gb_per_s"].items()))
    write_json(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
