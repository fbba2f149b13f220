"""Eye and mouth openness targets: the amount by which to open each region (:func:`dagan.motion.regions.opening`)
so that the output's landmarks show the target openness.

The solver is a secant search on each region's amount, all regions at once: every step renders one frame (the
source at its own pose and expression, the regions opened by the current amounts), finds its 68 landmarks and
measures the openness; the next amount follows the secant through the last two measurements (the first step
tries ``FIRST_STEP`` towards the target; a flat response doubles the step). It stops when every region is within
its tolerance (:data:`TOLERANCE`) or after ``max_steps`` renders, and keeps each region's best amount. Amounts stay
in ``AMOUNT_RANGE`` (-1 shuts a region onto its hinge). What was reached is reported either way: a model whose
keypoints do not move the eyes (few of DaGAN's unsupervised keypoints sit on them) cannot reach every target.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

TOLERANCE = {"eyes": 0.03, "mouth": 0.05}  # absolute, in the units of dagan.motion.regions.openness
AMOUNT_RANGE = (-1.0, 2.0)
FIRST_STEP = 0.5
MAX_STEPS = 8


class OpennessResult(NamedTuple):
    """amounts: the chosen opening per region; achieved: the openness measured with them; start: the openness
    without opening (the source as the model renders it); reached: within tolerance; steps: renders made;
    tolerance: the tolerance each region was held to (None: :data:`TOLERANCE`)."""

    targets: dict[str, float]
    amounts: dict[str, float]
    achieved: dict[str, float]
    start: dict[str, float]
    reached: dict[str, bool]
    steps: int
    tolerance: Optional[dict[str, float]] = None

    def describe(self) -> str:
        parts = []
        for name, target in self.targets.items():
            achieved = self.achieved.get(name, float("nan"))
            state = "reached" if self.reached.get(name) else "NOT reached"
            tolerance = (self.tolerance or TOLERANCE)[name]
            parts.append(f"{name} openness target {target:.3f}: {achieved:.3f} measured on the output's landmarks "
                         f"({state}, tolerance {tolerance:g}; {self.start.get(name, float('nan')):.3f} "
                         f"without, opening {self.amounts.get(name, 0.0):+.2f})")
        return "; ".join(parts)


def solve_openness(measure: Callable[[dict[str, float]], Optional[dict[str, float]]], targets: dict[str, float],
                   tolerance: Optional[dict[str, float]] = None, max_steps: int = MAX_STEPS) -> OpennessResult:
    """Amounts that bring each region's measured openness to its target (see the module docstring).

    measure(amounts) renders with {"eyes": a, "mouth": b} and returns the measured {"eyes": ..., "mouth": ...},
    or None when no face is found in the render.
    """
    tolerance = {**TOLERANCE, **(tolerance or {})}
    names = list(targets)
    amounts = {name: 0.0 for name in names}
    start = measure(amounts)
    if start is None:
        raise ValueError("no face found in the model's rendering of the source; openness targets need a face the "
                         "landmark detector finds")
    history = {name: [(0.0, start[name])] for name in names}
    best = {name: (abs(start[name] - targets[name]), 0.0) for name in names}
    last = (dict(amounts), dict(start))
    steps = 1
    while steps < max_steps:
        pending = [name for name in names if best[name][0] > tolerance[name]]
        proposals = {name: _next_amount(history[name], targets[name]) for name in pending}
        proposals = {name: amount for name, amount in proposals.items()
                     if amount is not None and all(abs(amount - tried) > 1e-6 for tried, _ in history[name])}
        if not proposals:
            break
        amounts = {name: proposals.get(name, best[name][1]) for name in names}
        measured = measure(amounts)
        steps += 1
        for name in proposals:
            history[name].append((amounts[name], float("nan") if measured is None else measured[name]))
        if measured is None:  # the face was lost in this render
            continue
        last = (dict(amounts), dict(measured))
        for name in names:  # the regions barely interact: each keeps its own best amount
            error = abs(measured[name] - targets[name])
            if error < best[name][0]:
                best[name] = (error, amounts[name])
    amounts = {name: best[name][1] for name in names}
    achieved = last[1]
    if any(abs(last[0][name] - amounts[name]) > 1e-12 for name in names):  # measure the chosen combination
        measured = measure(amounts)
        steps += 1
        achieved = measured if measured is not None else {name: float("nan") for name in names}
    reached = {name: abs(achieved[name] - targets[name]) <= tolerance[name] for name in names}
    return OpennessResult(dict(targets), amounts, dict(achieved), dict(start), reached, steps,
                          {name: tolerance[name] for name in names})


def _next_amount(history: list[tuple[float, float]], target: float) -> Optional[float]:
    """The secant step from the last two finite measurements (the first step: FIRST_STEP towards the target)."""
    points = [(amount, value) for amount, value in history if value == value]  # drop NaN (face lost)
    low, high = AMOUNT_RANGE
    if len(points) == 1:
        amount, value = points[0]
        return min(high, max(low, amount + (FIRST_STEP if target > value else -FIRST_STEP)))
    if len(history) > len(points) and history[-1][1] != history[-1][1]:  # the last render lost the face
        return 0.5 * (history[-1][0] + points[-1][0])
    (a0, v0), (a1, v1) = points[-2], points[-1]
    if abs(v1 - v0) < 1e-4:  # no response: go further the same way
        step = 2.0 * (a1 - a0) if a1 != a0 else FIRST_STEP
        proposal = a1 + step
    else:
        proposal = a1 + (target - v1) * (a1 - a0) / (v1 - v0)
    proposal = min(high, max(low, proposal))
    return None if abs(proposal - a1) < 1e-6 else proposal
