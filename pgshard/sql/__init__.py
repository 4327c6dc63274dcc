"""Pure statement analysis: classify, analyse, keys, confinement, fan-out plans; no I/O."""
