"""Working as a team: local S3 / PostgreSQL / MLflow servers and DVC remote helpers (docs/team.md:
"Working as a team"). Not imported by any pipeline stage."""
