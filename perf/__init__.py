"""Benchmarks of the package (the README's "Benchmark"; figures in ``perf/RESULTS.md``):
``python -m perf.bench --help``, ``python -m perf.btcvae --help``, ``python -m perf.codegen
--help``.

``perf`` is no part of the installed package: ``python -m perf.<module>`` runs from the
repository's root folder (elsewhere Python finds no module ``perf``), ``python
perf/<module>.py`` from any folder. Each module finds its files (``perf/out/``, the
repository's ``reference/``) from its own path, not from the current folder.

One suite file per benchmark declares what it races and its options, in the spirit of
``triton.testing.Benchmark``; the harness runs it:

=========================== ==================================================================
suites
``bench.py``                β-VAE: named workloads, the sweep, contenders, tolerances
``btcvae.py``               β-TCVAE: the (B, D) grid, the global batch, contenders, targets
``codegen.py``              compiled kernels: the cases whose launches are compiled
harness
``cli.py``                  options declared as data, the parser, torch set up, exit status
``contenders.py``           a contender's declaration; why one cannot be timed here
``race.py``                 warm-up, interleaved rounds, fastest median; rows, ratios
``timing.py``               timers (``do_bench`` on a GPU, ``torch.utils.benchmark`` on a CPU)
``memory.py``               peak extra memory, and the check of its counter
``machine.py``              where and when a suite ran (the JSON's ``meta``)
``tables.py``               text tables
``report.py``               the files written: text, strict JSON (whole or not at all), plot
β-VAE suite
``workloads.py``            a workload, the sweep, ``--workloads`` names, input sets
``vae_contenders.py``       the contenders' steps and the float64 oracle
``refmath.py``              the reference's maths in the inputs' dtype (``compiled-ref``)
``nidl.py``                 nidl's ``BetaVAELoss``, read at run time, never vendored
``vae_run.py``              how the suite runs
β-TCVAE suite
``tcvae_contenders.py``     ours, the timed step, inputs, the oracle
``tcvae_formula.py``        the B×B×D formula and its predicted peak memory
``gather.py``               the global batch: one process, and gloo ranks with gather=True
``targets.py``              the targets, checked and said in words
``tcvae_run.py``            how the suite runs
codegen suite
``specializations.py``      a launch's specialization, compiled; what the cubin and PTX say
``codegen_checks.py``       launches recorded, specializations checked
``codegen_report.py``       the report's tables and files
=========================== ==================================================================
"""
