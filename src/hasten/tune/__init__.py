"""``hasten tune``: pick the fastest configuration that meets a quality target on D devices.

Steps, all through the one engine (a :class:`hasten.session.Session` and
:func:`hasten.engine.run`; tune never calls the model or counts cost itself):

1. **Reference.** Sequential sampling of a pilot batch on the full grid; quality
   of every candidate is PSNR / RMSE / SSIM against it (same seed, :mod:`hasten.metrics`).
2. **Candidates** (:func:`candidates`): sequential on fewer steps, sequential +
   AB-Cache at a few intervals, CHORDS at a few core counts (alone and with a
   cache), ParaDiGMS and ParaSolver-Turbo at a few widths and tolerances. They
   form *chains* ordered from most to least accurate; once a member fails the
   target, the rest of its chain is skipped (pruning).
3. **Latency curve** (:func:`measure_latency`): the executor's forward time
   against rows per forward, 1, 2, 4, ... up to the most rows one device needs,
   median of a few repeats after a warm-up, under the thread count the
   distributed workers will use (:func:`worker_threads`; the candidates run
   under it too), then shifted by one constant per forward so that it
   explains the model time the candidate runs measured (:func:`calibrate`:
   forwards inside a run are slower than in a tight loop).
4. **Prediction** (:func:`predict_wall`), for each run candidate on D devices::

       wall(D) = sum over rounds r with model work of  latency(ceil(rows_r / D))
               + comm(ceil(rows_r / D))        (D > 1: the all-gather, measured)
               + bookkeeping                   (measured: the run's wall time here
                                                minus its time inside the model)

   ``rows_r`` is the engine's ``Result.round_rows`` (latent rows that reached the
   model in round r); ``latency`` and ``comm`` interpolate measured curves
   linearly. Every rank of the distributed executor runs the same bookkeeping
   at the same time, so it does not shrink with D.
5. **Ranking**: candidates meeting the target by predicted wall time, then the
   others; the winner is saved as a config file (:func:`save_config`) that
   ``hasten sample --config FILE`` and ``hasten.accelerate(pipe, config=FILE)`` read.
   Without a candidate that meets the target there is no winner and no config.

Modules: :mod:`.target` (the quality target), :mod:`.candidates`,
:mod:`.latency` (curves, calibration, the predictor), :mod:`.spawned` (timings
in spawned gloo ranks), :mod:`.search` (:func:`tune`), :mod:`.report` (files).
Config files belong to :mod:`hasten.config`, which every surface reads.
"""

from hasten.config import load_config, save_config
from hasten.tune.candidates import FAMILIES, Candidate, candidates
from hasten.tune.latency import Curve, batch_sizes, calibrate, measure_latency, predict_wall, worker_threads
from hasten.tune.report import COLUMNS, shown_columns, winner_line, write_report
from hasten.tune.search import TuneReport, tune
from hasten.tune.spawned import measure_comm, measure_rounds
from hasten.tune.target import Target

__all__ = ["COLUMNS", "shown_columns", "FAMILIES", "Candidate", "Curve", "Target", "TuneReport", "batch_sizes", "calibrate", "candidates",
           "load_config", "measure_comm", "measure_latency", "measure_rounds", "predict_wall", "save_config",
           "tune", "winner_line", "worker_threads", "write_report"]
