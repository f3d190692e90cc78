"""Developer sessions. CI runs `.ci/run`, which calls `nox -s tests` (the README's test command)."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session):
    """The quick suite: every kind, every path that can run here."""
    session.install("-e", ".[test]")
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
