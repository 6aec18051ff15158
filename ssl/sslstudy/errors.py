"""User-facing errors: one line that names the file and the fix."""


class UserError(Exception):
    """Bad input from the user (config, dataset, paths). The CLI prints it as one line."""


INTERRUPTED = "interrupted; rerun resumes"  # a command's one line on Ctrl-C (a job's log), instead of a traceback
