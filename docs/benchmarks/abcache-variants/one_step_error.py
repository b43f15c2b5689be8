"""AB-Cache forms (issue 11): where along the trajectory each form's prediction goes wrong.

Teacher-forced one-step error on the sequential DDIM-50 trajectory of ``digits`` (16 samples, seed 0),
order 2, interval 3: the cache is given the model's outputs at the steps it would compute and predicts
the others; each prediction is compared with the model's own output at the same latent, as the
clean-sample error it causes, ``||x0_pred - x0_model|| / ||x0_model||``.

Run from the repository root:  PYTHONPATH=src python docs/benchmarks/abcache-variants/one_step_error.py
Prints the grid's log-SNR steps h_i = lambda_{i+1} - lambda_i, then one line per form:
``grid step:error`` for every predicted step.
"""

import torch

from hasten.noise import initial_noise
from hasten.caches import ABCache, CacheConfig
from hasten.executors.batched import BatchedExecutor
from hasten.methods import Eval
from hasten.models import load_model
from hasten.steps import make_step, predict_x0_eps

torch.set_num_threads(2)
model = load_model("digits")
grid = model.grid(50)
step, executor = make_step(grid), BatchedExecutor(model.denoiser(grid))
lam = (grid.alpha[:-1] / grid.sigma[:-1]).log()
print("h", " ".join(f"{i}:{h:.3f}" for i, h in enumerate((lam[1:] - lam[:-1]).tolist())))
x = initial_noise(model, 16, 0)
trajectory = []
with torch.no_grad():
    for i in range(grid.steps):
        (out,) = executor.evaluate([Eval(x, i)])
        trajectory.append((x, out))
        x = step(x, out, i, i + 1)
for form in ("paper", "eps", "x0", "index"):
    cache = ABCache(CacheConfig(order=2, interval=3, form=form))
    cache.reset(grid)
    errors = []
    for i, (x, out) in enumerate(trajectory):
        ev = Eval(x, i)
        if cache.wants_model(ev, i + 1):  # sequential sampling: round i + 1 is step i
            cache.record(ev, out, computed=True)
            continue
        pred = cache.predict(ev)
        x0_pred, x0_model = predict_x0_eps(grid, x, pred, i)[0], predict_x0_eps(grid, x, out, i)[0]
        errors.append(f"{i}:{float((x0_pred - x0_model).norm() / x0_model.norm()):.3f}")
        cache.record(ev, pred, computed=False)
    print(f"{form:6s}", " ".join(errors))
