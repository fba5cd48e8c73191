"""`amlfs pipeline`: steps wired by their outputs, each an `amlfs run`, reused when nothing
they depend on changed."""
