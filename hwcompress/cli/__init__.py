"""The ``hwcompress`` command line: a thin layer that parses, calls the library, and prints.

Errors in the user's input (:class:`~hwcompress.errors.UserError`) are printed as one line on stderr
with exit code 2; a plugin that crashes (:class:`~hwcompress.errors.PluginError`) as one line naming it,
exit code 1; ``--debug`` or ``HWCOMPRESS_DEBUG=1`` shows the traceback instead. The library (and with
it PyTorch) is imported inside the commands, after the options are checked, so that ``hwcompress
--help`` and a mistyped option answer in a moment.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from hwcompress import __version__
from hwcompress.errors import PluginError, UserError
from hwcompress.plugins import manager


def debug_enabled() -> bool:
    return os.environ.get("HWCOMPRESS_DEBUG", "") not in ("", "0")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="hwcompress")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors (or set HWCOMPRESS_DEBUG=1).")
def cli(debug: bool) -> None:
    """Compress a trained PyTorch network until it meets a latency budget measured on a real device.

    \b
    Examples:
      hwcompress profile                                 # resnet18 on this CPU, measured
      hwcompress profile --model mobilenet_v2 --json -   # the JSON document on stdout
      hwcompress compare resnet18 mobilenet_v2           # which is faster here, by how much
      hwcompress devices                                 # what can be measured or predicted here
      hwcompress search --latency-ms 5                   # compress the embedded default to 5 ms
    """
    if debug:
        os.environ["HWCOMPRESS_DEBUG"] = "1"


def _add_commands() -> None:
    from hwcompress.cli import compare_cmd, devices_cmd, lut_cmd, profile_cmd, search_cmd

    cli.add_command(profile_cmd.profile)
    cli.add_command(compare_cmd.compare)
    cli.add_command(devices_cmd.devices)
    cli.add_command(devices_cmd.plugins_command)
    cli.add_command(search_cmd.search)
    cli.add_command(lut_cmd.lut)
    manager.call_hook("register_commands", cli=cli)


def _one_line_warning(message, *_details, **_more) -> str:
    return f"warning: {message}\n"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``hwcompress`` script."""
    import warnings

    warnings.formatwarning = _one_line_warning
    if argv is not None:
        argv = list(argv)
    elif "--debug" in sys.argv[1:]:
        os.environ["HWCOMPRESS_DEBUG"] = "1"
    try:
        _add_commands()
        cli.main(args=argv, prog_name="hwcompress", standalone_mode=False)
    except UserError as error:
        if debug_enabled():  # the traceback too, and the same exit code: scripts test for 2
            traceback.print_exc()
        click.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(2)
    except PluginError as error:
        if debug_enabled():
            traceback.print_exc()
            sys.exit(1)
        click.echo(f"error: {_one_line(error)} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # One line, like every other refusal: what is wrong and where the help is.
        command = error.ctx.command_path if error.ctx is not None else "hwcompress"
        click.echo(f"error: {_one_line(error.format_message())} (see `{command} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as error:
        click.echo(f"error: {_one_line(error.format_message())}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:
        if debug_enabled():
            raise
        click.echo(f"internal error: {type(error).__name__}: {_one_line(error)} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)
