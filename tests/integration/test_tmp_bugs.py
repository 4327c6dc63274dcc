import pytest

from tests.integration.test_differential import (  # noqa: F401
    PREFIXES, PROXY_BUGS, _apf_step, _apg_run, _describe, _pg_run, _steps, apg_conns, diff_env,
    pg_conns,
)

PARAMS = [(d, c) for c in PROXY_BUGS for d in c.drivers]


@pytest.mark.parametrize("d,c", PARAMS, ids=[f"{d}-{c.id}" for d, c in PARAMS])
async def test_bug(pg_conns, apg_conns, d, c):  # noqa: F811
    steps = _steps(c, PREFIXES[d])
    if d == "pg":
        a, b = _pg_run(pg_conns, "direct", c, steps), _pg_run(pg_conns, "proxy", c, steps)
    else:
        kw = {"step": _apf_step} if d == "apf" else {}
        a = await _apg_run(apg_conns["direct"], c, steps, **kw)
        b = await _apg_run(apg_conns["proxy"], c, steps, **kw)
    assert a == b, _describe(c, steps, a, b)
