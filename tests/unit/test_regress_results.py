"""The regress harness's pure core: pg_regress output, diffs, comparison and gate, as tables."""

import pytest

from tests.regress import results as R

SCHEDULE = """\
# ----------
# src/test/regress/parallel_schedule
# ----------
test: test_setup

# run tablespace by itself
test: tablespace
test: boolean char name   # a comment after tests
test: prepare
"""

OUTPUT_15 = """\
(using postmaster on 127.0.0.1, port 55687)
============== running regression test queries        ==============
test test_setup                   ... ok          136 ms
test tablespace                   ... FAILED      216 ms
parallel group (3 tests, in groups of 4):  char name boolean
     boolean                      ... ok          196 ms
     char                         ... failed (ignored)      46 ms
     name                         ... FAILED (test process exited with exit code 2)       54 ms
"""

OUTPUT_16_TAP = """\
# using postmaster on 127.0.0.1, port 5432
ok 1         - test_setup                                336 ms
not ok 2     - tablespace                                216 ms
# parallel group (3 tests):  char name boolean
ok 3         + boolean                                    96 ms
not ok 4     + char                                       46 ms
"""

DIFFS = """\
diff -U3 /src/expected/prepare.out /out/results/prepare.out
--- /src/expected/prepare.out	2026-05-11 19:49:58.000000000 +0000
+++ /out/results/prepare.out	2026-12-02 04:43:57.134058098 +0000
@@ -1,7 +1,7 @@
 PREPARE q1 AS SELECT 1 AS a;
 EXECUTE q1;
-DEALLOCATE q1;
+ERROR:  prepared statement "q1" does not exist
 -- context
diff -U3 /src/expected/horology.out /out/results/horology_1.out
--- /src/expected/horology.out	2026-05-11 19:49:58.000000000 +0000
+++ /out/results/horology_1.out	2026-12-02 04:43:57.134058098 +0000
@@ -1,3 +1,3 @@
-Sat Jan 01 00:00:00 2000 PST
+Sat Jan 01 08:00:00 2000 UTC
"""


def test_schedule_lists_tests_in_order_without_comments():
    assert R.parse_schedule(SCHEDULE) == ["test_setup", "tablespace", "boolean", "char",
                                          "name", "prepare"]


@pytest.mark.parametrize("text, expected", [
    (OUTPUT_15, {"test_setup": "ok", "tablespace": "failed", "boolean": "ok",
                 "char": "ignored", "name": "failed"}),
    (OUTPUT_16_TAP, {"test_setup": "ok", "tablespace": "failed", "boolean": "ok",
                     "char": "failed"}),
    ("", {}),
    ("parallel group (3 tests, in groups of 4):  char name boolean\n", {}),
])
def test_output_statuses(text, expected):
    assert R.parse_output(text) == expected


def test_diffs_split_per_test_and_excerpt_keeps_changed_lines_only():
    diffs = R.split_diffs(DIFFS)
    assert sorted(diffs) == ["horology_1", "prepare"]
    assert R.excerpt(diffs["prepare"]) == [
        "-DEALLOCATE q1;", '+ERROR:  prepared statement "q1" does not exist']
    assert R.excerpt(diffs["horology_1"], limit=1) == ["-Sat Jan 01 00:00:00 2000 PST"]


def test_excerpt_shows_what_was_printed_instead_of_a_long_removed_tail():
    hunk = ["@@ -1,9 +1,3 @@", " \\lo_unlink 42", *[f"-expected {i}" for i in range(400)],
            "+FATAL:  invalid message type 'F'", "+server closed the connection unexpectedly"]
    assert R.excerpt(hunk) == ["-expected 0", "-expected 1", "-expected 2",
                               "-… 397 more line(s)", "+FATAL:  invalid message type 'F'",
                               "+server closed the connection unexpectedly"]


def test_excerpt_walks_blocks_until_the_limit():
    hunk = ["@@ -1 +1 @@"]
    for i in range(6):
        hunk += [f"-old {i}", f"+new {i}", " context"]
    assert R.excerpt(hunk, limit=5) == ["-old 0", "+new 0", "-old 1", "+new 1", "-old 2"]


def test_a_changed_line_that_looks_like_a_file_header_is_kept():
    # A removed SQL comment "-- x" reads "--- x" in a hunk: a change, not a file header.
    diffs = R.split_diffs("diff -U3 e/x.out r/x.out\n--- e/x.out\n+++ r/x.out\n@@ -1 +1 @@\n"
                          "--- x\n+++ y\n ctx\n")
    assert R.excerpt(diffs["x"]) == ["--- x", "+++ y"]


TESTS = ["a", "b", "c", "d"]


def run(statuses, passed=None):
    return {"tests": statuses, "passed": R.passed(statuses, TESTS) if passed is None else passed}


@pytest.mark.parametrize("direct, proxied, expected", [
    ({"a": "ok", "b": "ok", "c": "failed"}, {"a": "ok", "b": "failed", "c": "failed"}, ["b"]),
    ({"a": "ok", "b": "ok"}, {"a": "ok"}, ["b"]),             # never reported: not passed
    ({"a": "failed"}, {"a": "ok"}, []),                       # fixed by the proxy: not counted
    ({t: "ok" for t in TESTS}, {"d": "ok", "a": "ignored"}, ["a", "b", "c"]),
])
def test_proxy_caused(direct, proxied, expected):
    assert R.proxy_caused(direct, proxied, TESTS) == expected


def runs_with(session_caused, tx4_passed):
    direct = run({t: "ok" for t in TESTS})
    return {"direct": direct,
            "session": {**run({}), "proxy_caused": session_caused},
            "transaction-4": {**run({}, tx4_passed), "proxy_caused": ["a", "b"]}}


BASELINE = {"direct_floor": 4,
            "modes": {"session": {"known_failures": ["b", "c"]},
                      "transaction-4": {"floor": 2, "known_failures": ["a"]}}}


@pytest.mark.parametrize("session_caused, tx4_passed, failing", [
    (["b", "c"], 2, []),                      # exactly the baseline
    (["b"], 3, []),                           # better than the baseline
    (["a", "b"], 2, ["session"]),             # a new session failure
    (["b", "c"], 1, ["transaction-4"]),       # below the floor
    (["a"], 0, ["session", "transaction-4"]),
])
def test_gate(session_caused, tx4_passed, failing):
    failures, _notes = R.evaluate_gate(runs_with(session_caused, tx4_passed), BASELINE)
    assert [f.split(":")[0] for f in failures] == failing


def test_gate_notes_what_the_baseline_can_drop():
    failures, notes = R.evaluate_gate(runs_with(["b"], 2), BASELINE)
    assert failures == []
    assert any(n.startswith("session:") and n.endswith(": c") for n in notes)
    assert any(n.startswith("transaction-4: not in the baseline") for n in notes)


def test_gate_notes_a_floor_that_can_rise_only_above_the_recorded_run():
    baseline = {"direct_floor": 4, "modes": {"transaction-4": {"floor": 1, "recorded_passed": 3}}}
    assert not any("can rise" in n for n in R.evaluate_gate(runs_with([], 3), baseline)[1])
    assert any("can rise" in n for n in R.evaluate_gate(runs_with([], 4), baseline)[1])


def test_gate_fails_a_broken_setup_and_a_missing_direct_run():
    runs = runs_with([], 4)
    runs["direct"] = run({"a": "ok"})
    failures, _ = R.evaluate_gate(runs, BASELINE)
    assert failures and failures[0].startswith("direct:")
    failures, _ = R.evaluate_gate({"session": runs["session"]}, BASELINE)
    assert failures and "direct run is missing" in failures[0]


def test_baseline_from_a_run_passes_its_own_gate():
    runs = runs_with(["a", "d"], 3)
    new = R.baseline_from(runs, {"comment": "kept"}, {"transaction-4": 1})
    assert new["comment"] == "kept"
    assert new["direct_floor"] == 1
    assert new["modes"]["session"] == {"known_failures": ["a", "d"]}
    assert new["modes"]["transaction-4"] == {"known_failures": ["a", "b"], "floor": 2,
                                             "recorded_passed": 3}
    assert R.evaluate_gate(runs, new)[0] == []


def test_table_lists_runs_in_mode_order_with_proxy_caused_counts():
    runs = {"session": {"passed": 198, "proxy_caused": ["x"] * 13, "seconds": 80.4},
            "direct": {"passed": 209, "seconds": 54.0},
            "transaction-1": {"passed": 10, "proxy_caused": [], "seconds": 5, "complete": False,
                              "incomplete_reason": "stopped after 60 s"}}
    lines = R.render_table(runs, 217).splitlines()
    assert lines[0] == "| run | passed of 217 | time |"
    assert lines[2].startswith("| the shard directly") and "| 209 | 54 s |" in lines[2]
    assert "| 198 (13 failures caused by the proxy) | 80 s |" in lines[3]
    assert "did not finish: stopped after 60 s" in lines[4]
    assert len(lines) == 5
