-- Runs once, when the postgres service first creates its volume. The default database
-- (POSTGRES_DB=optuna) holds the Optuna studies; MLflow keeps its runs and, with basic auth,
-- its users in databases of their own: both use Alembic and would share one version table.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
