"""The environment switch and ``install()``: agentlightning's own code made to build the attempt-aware classes.

- ``install``: ``install()`` / ``uninstall()``: the upstream names rebound to the attempt-aware
  classes in every agentlightning module that bound them, verl's daemon once it is imported;
- ``variables``: the ``LIGHTNING_ATTEMPTS_<OPTION>`` variables, and ``resolve()``, the one
  precedence of the options of the servers built for the user;
- ``activation``: what a process with the switch's variables does once agentlightning is imported.

The switch itself, ``LIGHTNING_ATTEMPTS_INSTALL``, is read at interpreter start by the
``.pth`` hook's module, ``_lightning_attempts_startup`` (installed beside the package, as it
must cost nothing to a process that never imports agentlightning), which also holds the one
import hook (``after_import``). Importing this package changes nothing.
"""
