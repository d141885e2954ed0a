-- One server, three databases: Dagster's instance, MLflow's tracking store and registry.
CREATE USER dagster WITH PASSWORD 'dagster';
CREATE DATABASE dagster OWNER dagster;
CREATE USER mlflow WITH PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
