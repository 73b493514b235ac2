"""onestep core: paths, denoisers, solvers, distillation, networks, training and metrics."""
