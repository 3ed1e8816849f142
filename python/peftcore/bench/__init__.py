"""The microbenchmark suite (`peftcore-bench`): every op family against the
alternatives users have and against the machine's measured limits."""
