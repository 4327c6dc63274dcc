"""No statement text costs classify.plan more than linear time: adversarial patterns (long
runs of spaces, quotes, comment openers, nested comments, dollars, SET/RESET/SHOW
prefixes) and random mutations, each timed (no servers)."""

from __future__ import annotations

import random
import time

from pgshard.protocol.errors import PgError
from pgshard.sql import classify as r

# Generous for a loaded 2-core CI machine; the cubic regex this replaces took 9.5 s for a
# 2 KB SET, and 2 KB of any pattern here takes well under a millisecond.
BUDGET_PER_CHAR = 50e-3 / 16384     # 50 ms for 16 KB
# Four times the length: linear costs ~4x, quadratic ~16x; 8x sits well between the two
# (a doubling's 2x vs 4x was too close to timer noise on a loaded machine).
MAX_GROWTH = 8.0


def _patterns(n: int) -> dict[str, str]:
    sp = " " * n
    return {
        "set_spaces": "SET pgshard.shard_key = 'a" + sp + "b'",
        "set_spaces_bare": "SET pgshard.shard_key = a" + sp + "b",
        "set_generic_spaces": "SET work_mem = a" + sp + "b",
        "set_to_spaces": "SET pgshard.shard_key" + sp + "TO" + sp + "x",
        "set_time_zone": "SET TIME ZONE" + sp + "'UTC'",
        "reset_spaces": "RESET pgshard.shard_key" + sp + "x",
        "show_spaces": "SHOW pgshard.shard" + sp + "x",
        "deallocate": "DEALLOCATE " + sp + "x" + sp,
        "rollback": "ROLLBACK" + sp + "TO",
        "quotes": "SELECT " + "'" * n,
        "dquotes": 'SELECT ' + '"' * n,
        "openers": "SELECT " + "/*" * (n // 2),
        "nested": "SELECT " + "/*" * (n // 4) + "*/" * (n // 4),
        "closers": "SELECT /* " + "*/" * (n // 2),
        "hint_spaces": "SELECT 1 /* shard_key:" + sp + "*/",
        "hint_quotes": "SELECT 1 /* shard_key: '" + "''" * (n // 2) + " */",
        "dollars": "SELECT " + "$" * n,
        "dollar_tags": "SELECT " + "$a" * (n // 2),
        "dollar_open": "SELECT $" + "a" * n,
        "word_dollars": "SELECT a" + "$" * n,
        "semicolons": "SELECT 1" + ";" * n,
        "statements": "SELECT 1;" * (n // 9),
        "set_statements": "SET x = 1;" * (n // 10),
        "line_comments": "SELECT 1 " + "--\n" * (n // 3),
        "operators": "SELECT 1 " + "+-" * (n // 2) + " 1",
        "set_operators": "SET pgshard.shard_key = " + "+-" * (n // 2) + "1",
        "set_list": "SET pgshard.shard_key = " + "1," * (n // 2) + "1",
        "set_generic_list": "SET search_path = " + "a," * (n // 2) + "a",
        "e_backslashes": "SELECT E'" + "\\\\" * (n // 2) + "'",
        "std_backslashes": "SELECT '" + "\\" * n + "' /* shard_key: 1 */",
        "continuations": "SET pgshard.shard_key = 'a'" + "\n'b'" * (n // 4),
        "parens": "(" * n + "SELECT 1",
        "e_prefixes": "SELECT " + "E'a'" * (n // 4),
        "quoted_name": 'SET "pgshard"' + '."x"' * (n // 4) + " = 1",
        "begin_newlines": "BEGIN" + "\n" * n,
        "hinted_insert": "INSERT INTO t VALUES " + "(1, '/* shard_key: 2 */')," * (n // 25) + "(1, 'x')",
    }


def _time(sql: str, reps: int) -> float:
    """The least CPU time of this thread over reps plans of sql. CPU time, not wall time:
    on a shared, oversubscribed CI machine the wall clock also counts the time other
    processes held the core, which says nothing about what routing costs."""
    best = float("inf")
    for _ in range(reps):
        r.clear_cache()
        t0 = time.thread_time()
        try:
            r.plan(sql)
        except PgError:
            pass
        best = min(best, time.thread_time() - t0)
    return best


def test_adversarial_patterns_cost_linear_time():
    try:
        small, large = 4096, 16384
        slow = []
        for name, sql in _patterns(small).items():
            t_small = _time(sql, 3)
            t_large = _time(_patterns(large)[name], 3)
            if t_large > BUDGET_PER_CHAR * len(_patterns(large)[name]):
                slow.append(f"{name}: {t_large * 1e3:.1f} ms for {large} chars")
            # A ratio is meaningful only above timer noise.
            if t_large > 2e-3 and t_large > MAX_GROWTH * t_small:
                # measure again before blaming the pattern (a loaded machine stalls at random)
                t_small, t_large = _time(sql, 5), _time(_patterns(large)[name], 5)
                if t_large > 2e-3 and t_large > MAX_GROWTH * t_small:
                    slow.append(f"{name}: x{t_large / t_small:.1f} from {small} to {large} chars")
        assert not slow, slow
    finally:
        r.clear_cache()


_PIECES = [" ", "  ", "'", "''", '"', "$", "$$", "$a$", "/*", "*/", "--", "\n", ";", "\\",
           "E'", "U&'", "SET ", "RESET ", "SHOW ", "pgshard.", "shard_key", " = ", " TO ",
           "(", ")", ",", "1", "x", "/* shard_key: 1 */", "DEFAULT", "||", "+", "-", ".",
           "SELECT ", "BEGIN", "ROLLBACK ", "DEALLOCATE ", "é"]


def test_random_statement_texts_stay_within_budget():
    rnd = random.Random(5)
    worst = (0.0, "")
    t_end = time.monotonic() + 4.0
    count = 0
    while time.monotonic() < t_end and count < 3000:
        size = rnd.choice([16, 64, 256, 1024, 4096, 16384])
        parts: list[str] = []
        length = 0
        while length < size:
            piece = rnd.choice(_PIECES)
            piece *= rnd.choice([1, 1, 1, 2, 8, 64, 512])
            parts.append(piece)
            length += len(piece)
        sql = "".join(parts)[:size]
        t = _time(sql, 1)
        if t > BUDGET_PER_CHAR * max(len(sql), 2048):
            t = _time(sql, 3)   # only a repeatable cost counts
        per = t / max(len(sql), 2048)
        if per > worst[0]:
            worst = (per, sql)
        count += 1
    r.clear_cache()
    assert count >= 200
    assert worst[0] <= BUDGET_PER_CHAR, (worst[0] * 16384, worst[1][:200])
