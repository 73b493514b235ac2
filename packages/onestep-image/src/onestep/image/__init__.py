"""onestep image: image datasets, image teachers, one-step image distillation and evaluation,
built on onestep.core (work in progress: see the project's issue on onestep-image)."""
