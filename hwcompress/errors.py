"""Errors that reach the user as one line instead of a traceback.

* :class:`UserError`: a problem with what the user asked for (an option, a file, a budget, a model),
  or a profiler's clean refusal. One line on stderr, exit code 2.
* :class:`PluginError`: a plugin crashed; the line names the plugin, what it was doing and what it
  raised. Exit code 1; ``--debug`` shows the traceback.
"""


class UserError(Exception):
    """A problem with the user's input: shown as one line, exit code 2."""


class PluginError(Exception):
    """A plugin failed while the core called it: shown as one line naming the plugin, exit code 1."""
