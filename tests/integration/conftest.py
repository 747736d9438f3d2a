"""Fixtures for the Jupyter tests: the real daemon (gunicorn, socket + loopback TCP) and a real
Notebook 7 server running as the kernel user, wired to each other as in a Jusnap install
(made by tests/stack.py, the one factory for them)."""

from __future__ import annotations

import pwd
from collections.abc import Callable, Iterator

import pytest

from tests.stack import Stack, StackFactory

JusnapStack = Stack


@pytest.fixture
def make_stack(
    criu_binary: str, kernel_user: pwd.struct_passwd
) -> Iterator[Callable[..., JusnapStack]]:
    """Stacks of the test's own: for a test that restarts Jupyter with other options, needs
    other daemon settings, or asserts on what a fresh stack holds."""
    factory = StackFactory(criu_binary, kernel_user)
    yield factory.make
    factory.close()


@pytest.fixture(scope="module")
def module_stack(criu_binary: str, kernel_user: pwd.struct_passwd) -> Iterator[JusnapStack]:
    """One stack (default settings, automatic snapshots off) shared by a module's tests."""
    factory = StackFactory(criu_binary, kernel_user)
    yield factory.make()
    factory.close()


@pytest.fixture
def stack(module_stack: JusnapStack) -> Iterator[JusnapStack]:
    """*A* stack: the module's, running, and with no kernel left by an earlier test (each test
    uses notebooks of its own, so no snapshot of another test is listed to it either)."""
    module_stack.revive()
    yield module_stack
    module_stack.clear_kernels()
