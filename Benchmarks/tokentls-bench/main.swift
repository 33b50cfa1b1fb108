// Placeholder for the benchmark program; scripts/bench runs it.
print("tokentls-bench: not written yet")
