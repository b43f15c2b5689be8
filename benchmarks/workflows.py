"""Figures of docs/WORKFLOWS.md (not tests): edits and videos through a real ``hasten serve``, and MP4 encode cost.

Starts real servers on free loopback ports with tiny random pipelines (no download) and talks to them with the
official ``openai`` client. Prints a JSON report (and writes it with --out).

    python benchmarks/workflows.py --repeats 5 --out docs/benchmarks/workflows/workflows.json

Sections:
* edits: ``images.edit`` on a tiny SD inpaint pipeline (32x32), non-streamed and streamed with previews: the
  client's end-to-end latency (median of --repeats after a warm-up) and the server's own preview seconds;
* videos: ``videos.create`` -> polled ``retrieve`` -> ``download_content`` on a tiny Wan pipeline: end-to-end
  latency, the server's sampling seconds and its preview seconds (a job's hits are previewed for its progress);
* encode: ``hasten.mp4.encode_mp4`` seconds against ``hasten.sample`` seconds of the tiny Wan clip, and the encode
  seconds of a real-size clip (81 frames of 832x480, a moving gradient: no sampling, the encoder alone).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_helpers import Server  # noqa: E402

STEPS, CORES = 8, 3


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def median_of(fn, repeats: int) -> tuple[float, list]:
    fn()  # warm-up
    times, outs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs.append(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), outs


def edits(root: Path, repeats: int) -> dict:
    import openai

    from hasten.testing.pipelines import save_tiny_pipeline
    from hasten.testing.workflows import tiny_images

    folder = save_tiny_pipeline("sd-inpaint", root / "tiny-inpaint")
    images = tiny_images(32)
    server = Server("--model", str(folder), "--method", "chords", "--steps", str(STEPS), "--cores", str(CORES))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    kw = dict(image=("i.png", png(images["image"]), "image/png"), mask=("m.png", png(images["mask_image"]),
              "image/png"), prompt="a cat", extra_body={"seed": "1"})
    try:
        plain_s, plain = median_of(lambda: client.images.edit(**kw), repeats)

        def streamed():
            events = list(client.images.edit(stream=True, **kw))
            return events[-1].model_dump()["hasten"]["cost"], sum(e.type.endswith("partial_image") for e in events)

        stream_s, outs = median_of(streamed, repeats)
    finally:
        server.stop()
    cost = plain[-1].model_dump()["hasten"]["cost"]
    return {"model": "tiny sd-inpaint 32x32", "steps": STEPS, "method": f"chords K={CORES}",
            "latency_s": plain_s, "stream_latency_s": stream_s, "sampling_s": cost["wall_s"],
            "partials": outs[-1][1], "preview_s": statistics.median(o[0]["preview_s"] for o in outs)}


def videos(root: Path, repeats: int) -> dict:
    import openai

    from hasten.testing.pipelines import save_tiny_pipeline

    folder = save_tiny_pipeline("wan", root / "tiny-wan")
    server = Server("--model", str(folder), "--method", "chords", "--steps", str(STEPS), "--cores", str(CORES),
                    "--size", "16x16", "--frames", "9")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)

    def one():
        video = client.videos.create(prompt="a cat", extra_body={"seed": "1"})
        while video.status in ("queued", "in_progress"):
            time.sleep(0.02)
            video = client.videos.retrieve(video.id)
        mp4 = client.videos.download_content(video.id).read()
        return video.model_dump()["hasten"]["cost"], len(mp4)

    try:
        latency, outs = median_of(one, repeats)
    finally:
        server.stop()
    return {"model": "tiny wan 16x16, 9 frames", "steps": STEPS, "method": f"chords K={CORES}", "latency_s": latency,
            "sampling_s": statistics.median(o[0]["wall_s"] for o in outs),
            "preview_s": statistics.median(o[0]["preview_s"] for o in outs), "mp4_bytes": outs[-1][1]}


def encode(root: Path, repeats: int) -> dict:
    import hasten
    from hasten.mp4 import clips, mp4_bytes
    from hasten.testing.pipelines import save_tiny_pipeline

    folder = save_tiny_pipeline("wan", root / "tiny-wan-2")
    call = {"prompt": "a cat", "height": 16, "width": 16, "num_frames": 9}
    sample_s, results = median_of(lambda: hasten.sample(str(folder), "chords", cores=CORES, steps=STEPS, call=call,
                                                        stop="none"), repeats)
    model = hasten.load_model(str(folder), call=call)
    model.grid(STEPS)
    frames = clips(model.decode(results[-1].x), 1)
    tiny_s, _ = median_of(lambda: mp4_bytes(frames), repeats)
    t = torch.linspace(0, 1, 81)[:, None, None, None]
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 480), torch.linspace(0, 1, 832), indexing="ij")
    big = torch.stack([(xs + t[:, 0]) % 1, (ys + t[:, 0]) % 1, ((xs + ys) / 2 + 0 * t[:, 0]).expand(81, -1, -1)], 1)
    big_s, out = median_of(lambda: mp4_bytes(big), max(1, repeats // 2))
    return {"tiny_clip": "16x16, 9 frames", "sample_s": sample_s, "encode_s": tiny_s,
            "real_size_clip": "832x480, 81 frames", "real_size_encode_s": big_s, "real_size_bytes": len(out[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        report = {"torch_threads": torch.get_num_threads(), "edits": edits(root, args.repeats),
                  "videos": videos(root, args.repeats), "encode": encode(root, args.repeats)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
