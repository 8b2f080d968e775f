"""Pictures of tlatlas results: circuitsvis maps, matplotlib figures, the HTML report.

Import-light on purpose: import the submodule you need (``tlatlas.viz.figures``,
``tlatlas.viz.maps``, ``tlatlas.viz.report``, ``tlatlas.viz.steering_plots``); matplotlib
is only loaded by those that draw.
"""
