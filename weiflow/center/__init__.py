"""The control center: jobs, runs, datasets and retention in a database, a REST API and a web console.

Needs the ``[center]`` extra (SQLAlchemy, Alembic, FastAPI). The core never imports this
package; the runtime reaches the center only through events (:class:`weiflow.tracking.CenterTracker`).
"""

__all__: list[str] = []
