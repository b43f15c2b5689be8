"""Video out (issue 27): H.264 MP4s from hasten.mp4 and from ``hasten sample`` on a tiny video pipeline."""

import json

import pytest
import torch

pytest.importorskip("av")

from hasten.cli import main  # noqa: E402
from hasten.mp4 import clips, decode_mp4, mp4_bytes  # noqa: E402


def test_frames_round_trip_through_h264():
    torch.manual_seed(0)
    frames = torch.rand(1, 3, 1, 1).expand(7, 3, 17, 21).clone()  # flat colours survive 4:2:0 and the codec
    frames[3:] = 1 - frames[3:]
    back = decode_mp4(mp4_bytes(frames, fps=8))
    assert back.shape == (7, 18, 22, 3)  # odd sides padded to even
    got = torch.from_numpy(back[:, :17, :21]).permute(0, 3, 1, 2).float() / 255
    assert (got - frames).abs().mean() < 0.03
    import av

    with av.open(__import__("io").BytesIO(mp4_bytes(frames, fps=8))) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.video[0].average_rate == 8


def test_still_images_are_no_clip():
    assert clips(torch.rand(4, 3, 8, 8), 4) is None
    assert clips(torch.rand(10, 3, 8, 8), 2).shape == (5, 3, 8, 16)


@pytest.mark.parametrize("kind,batch", [("wan", 2), ("ltx", 1)])
def test_hasten_sample_writes_an_mp4_of_every_frame_and_one_per_hit(kind, batch, tmp_path, capsys):
    pytest.importorskip("transformers")
    from hasten.testing.pipelines import TINY_CALLS, save_tiny_pipeline

    folder = save_tiny_pipeline(kind, tmp_path / kind)
    call = TINY_CALLS[kind]
    out = tmp_path / "out"
    assert main(["sample", "--model", str(folder), "--prompt", "a cat", "--height", str(call["height"]), "--width",
                 str(call["width"]), "--frames", str(call["num_frames"]), "--steps", "4", "--cores", "2",
                 "--batch", str(batch), "--fps", "12", "--out", str(out), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    video = decode_mp4(out / "samples.mp4")
    frames = video.shape[0]
    assert frames == call["num_frames"] and video.shape[2] == batch * call["width"]  # two samples side by side
    assert (out / "samples.png").is_file()  # what it wrote before stays
    hits = sorted(out.glob("hit_*.mp4"))
    assert len(hits) == len(summary["hits"]) >= 1
    assert all(decode_mp4(h).shape[0] == frames for h in hits)
