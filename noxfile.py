"""Developer sessions. CI runs `.ci/run`, which calls `nox -s tests` (the README's test command)."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session):
    """The quick suite: every kind, every path that can run here."""
    session.install("-e", ".[test,compat-test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session
def properties(session):
    """The same property tests with many more hypothesis examples."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "--hypothesis-profile=thorough", *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", ".")


# Pinned implementations the conformance suite compares against (conformance/README.md).
CONFORMANCE_PINS = ["mlx-recurrence==0.3.0", "mlx-lm==0.32.2", "fla-core==0.6.0"]


@nox.session
def conformance(session):
    """recurops against mlx-recurrence, mlx-lm and fla: values and gradients."""
    import sys

    session.install("-e", ".[test]", *CONFORMANCE_PINS)
    # PyTorch runs only fla's pure-PyTorch naive references, on the CPU. On Linux pin the
    # "+cpu" build so pip can never pull a CUDA torch; macOS wheels are CPU builds already.
    torch = "torch==2.13.0+cpu" if sys.platform.startswith("linux") else "torch==2.13.0"
    try:
        session.install("--only-binary=torch", torch)
    except nox.command.CommandFailed:
        session.warn(f"{torch} cannot be installed here: the fla conformance tests will skip")
    session.run("pytest", "-q", "-p", "no:cacheprovider", "conformance", *session.posargs)


@nox.session
def docs(session):
    """Build the documentation site (site/); any warning fails the build."""
    session.install(
        "-e", ".", "mkdocs==1.6.1", "mkdocs-material", "mkdocstrings[python]", "ruff"
    )
    session.run("mkdocs", "build", "--strict", *session.posargs,
                env={"NO_MKDOCS_2_WARNING": "1"})
