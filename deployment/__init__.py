"""Deploy tooling for the DICOM renderer: packaging and one unit per AWS resource.

Never shipped to Lambda: ``deployment.package.RUNTIME_MODULES`` names exactly what is.
``deploy.py`` is the command line; each unit here has ``ensure()`` and ``remove()``
and hands its results to the next unit as return values.
"""
