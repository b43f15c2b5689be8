"""Quality by default (issue 11): defaults stay close to sequential sampling of the same seed.

For every embedded model, every method with its default options and every cache
with its defaults (on sequential sampling, as ``hasten sample --method sequential
--cache reuse|abcache``) must reach a PSNR floor against the sequential result of
the same seed: decoded images with peak 1 for ``digits`` and ``digits-cond`` (guided, a digit per sample), latents with the
reference's range as peak for the mixtures, as ``hasten bench`` measures. Floor:
30 dB for every model. Measured margins (batch 4, seed 0, 50 steps): the lowest
are CHORDS on ``gmm`` (about 37 dB) and reuse on ``digits`` (about 35 dB).
Run against the code before issue 11 (form ``paper`` on VP grids) this file fails
three cases: abcache on digits 8.6 dB, reuse on digits 11.0 dB, reuse on gmm 16.4 dB.
"""

import pytest

import hasten
from hasten.methods import METHODS
from hasten.metrics import psnr
from hasten import load_model
from hasten.models import MODELS

FLOOR_DB = {"digits": 30.0, "digits-cond": 30.0, "gmm": 30.0, "gmm-flow": 30.0}
STEPS, BATCH, SEED = 50, 4, 0
CASES = [(m, "none") for m in METHODS if m != "sequential"] + [("sequential", c) for c in ("reuse", "abcache")]


@pytest.fixture(scope="module", params=MODELS)
def reference(request):
    # the conditional digits as the server uses it: a digit per sample, the default guidance
    call = {"prompt": ["3", "7", "1", "0"]} if request.param == "digits-cond" else None
    model = load_model(request.param, batch=BATCH, call=call)
    return model, hasten.sample(model, "sequential", steps=STEPS, batch=BATCH, seed=SEED).x


@pytest.mark.parametrize("method, cache", CASES)
def test_defaults_stay_above_the_quality_floor(reference, method, cache):
    model, ref = reference
    stop = "first" if method == "chords" else "none"  # the command line's default stop rule per method
    result = hasten.sample(model, method, steps=STEPS, batch=BATCH, seed=SEED, stop=stop,
                           cache=None if cache == "none" else cache)
    images, ref_images = model.decode(result.x), model.decode(ref)
    quality = psnr(result.x, ref) if images is None else psnr(images, ref_images, 1.0)
    assert result.rounds < STEPS  # it did accelerate
    assert quality >= FLOOR_DB[model.name], f"{model.name} {method} cache={cache}: {quality:.1f} dB"
