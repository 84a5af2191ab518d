"""Running jobs on GPU workers anywhere, through PostgreSQL and procrastinate (issue 12).

Nothing here imports discord: :mod:`bot.gpu_worker` uses it on machines with only a GPU.
"""
