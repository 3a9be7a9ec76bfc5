"""The statistics of comparative judgement: the penalised Bradley-Terry fit with position bias,
its standard errors, reliability, fit statistics and anchoring.

`cj_client.scoring` is the face a run uses; these modules hold one idea each.
"""
