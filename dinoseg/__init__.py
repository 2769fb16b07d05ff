"""dinoseg's command line (:mod:`dinoseg.cli`): ``python -m dinoseg`` or the ``dinoseg`` console script.

The method lives in :mod:`dinoseg_core`, the Prefect tasks and flows in :mod:`tasks` and :mod:`flows`; this
package only turns command-line arguments into calls of those.
"""
