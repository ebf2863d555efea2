"""Fuzz: hostile recordings, names, model cards, configs, options and signals from one seed, each
through the real command line in its own process (tests/fuzzing.py draws them and says what each
must do, from the README's "Bad input and exit statuses"). bench/fuzz.py runs the same generator
over a thousand or more. Another seed: WHALE_LISTEN_FUZZ_SEED=N; a failure names the seed and
the case, which reproduce it alone (`Fuzzer(...).case(index, kind)`)."""

import os
import signal

from .fuzzing import CLEAN, Fuzzer, run_case, run_many

SEED = int(os.environ.get("WHALE_LISTEN_FUZZ_SEED", "14"))
CASES = 40  # each kind 3-4 times; ~35 s of CPU in all (a resampled file ~2 s): < 1 min on 2 cores


def test_hostile_inputs_are_one_line_and_lose_no_event(tmp_path, tiny_model):
    fuzzer = Fuzzer(tmp_path, tiny_model, SEED)
    fuzzer.prepare()  # the intact recordings' events, which a cut file must keep
    outcomes = run_many(fuzzer, list(range(CASES)), workers=2, every_kind=True)
    failed = [
        f"{o.case.name}: {'; '.join(o.problems)}\n    stderr tail: {o.stderr[-400:]!r}"
        for o in outcomes
        if o.problems
    ]
    assert not failed, f"fuzz seed {SEED} (WHALE_LISTEN_FUZZ_SEED={SEED}):\n" + "\n".join(failed)
    assert {o.case.kind for o in outcomes} == set(Fuzzer.WEIGHTS)
    assert sum(o.logged for o in outcomes) > 0, "no case logged an event: nothing was checked"


def test_the_harness_catches_a_hang_a_wrong_status_and_a_lost_cut(tmp_path, tiny_model):
    """The checks themselves: a daemon waiting forever for a second subscriber is a hang, and a
    cut whose intact file had events the cut run never logged is a loss."""
    fuzzer = Fuzzer(tmp_path, tiny_model, SEED)
    waiting = fuzzer._case(0, "hang", "waits for 2 subscribers", ["--wait-subscribers", "2"],
                           CLEAN, fuzzer.bases["wav"].path)  # fmt: skip
    outcome = run_case(waiting, timeout=8)
    assert outcome.hung and outcome.status is None
    assert any("hung" in p for p in outcome.problems)
    invented = (1.0, 3.0, 2.0, 3)  # an event the intact file "had" at 1-3 s
    cut = fuzzer._case(1, "truncated", "intact, claimed cut", [], CLEAN,
                       fuzzer.bases["wav"].path, intact=[invented], before_s=30.0)  # fmt: skip
    outcome = run_case(cut)
    assert outcome.status == 0 and any("differ from the intact" in p for p in outcome.problems)
    assert outcome.events_lost == 1
    stopped = fuzzer._case(2, "signal", "SIGTERM, expected 64", ["--realtime"], frozenset({64}),
                           fuzzer.bases["wav"].path, send=(signal.SIGTERM, 0.2))  # fmt: skip
    outcome = run_case(stopped)
    assert outcome.status == 0 and any("exit status 0" in p for p in outcome.problems)
