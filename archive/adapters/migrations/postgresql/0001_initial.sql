-- Catalog schema, version 1 (PostgreSQL): the Query/Retrieve information model
-- of PS3.4 C.6 normalised into patients, studies, series and instances.
-- JSON columns hold DICOM JSON (PS3.18 F.2) as JSONB; times are unix seconds.
-- Columns matched with prefix wildcards get text_pattern_ops indexes, which serve
-- both equality and LIKE 'DOE%' whatever the database collation.

CREATE TABLE patients (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL DEFAULT '',
    patient_name TEXT,
    patient_name_folded TEXT,
    birth_date TEXT,
    sex TEXT,
    attrs JSONB NOT NULL DEFAULT '{}',
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_patient_id ON patients (patient_id text_pattern_ops);
CREATE INDEX patients_name_folded ON patients (patient_name_folded text_pattern_ops);

CREATE TABLE studies (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_fk BIGINT NOT NULL REFERENCES patients (id),
    study_uid TEXT NOT NULL UNIQUE,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_description TEXT,
    referring_physician TEXT,
    referring_physician_folded TEXT,
    attrs JSONB NOT NULL DEFAULT '{}',
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX studies_patient_fk ON studies (patient_fk);
CREATE INDEX studies_date ON studies (study_date DESC NULLS LAST, study_uid);
CREATE INDEX studies_accession ON studies (accession_number text_pattern_ops);

CREATE TABLE series (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_fk BIGINT NOT NULL REFERENCES studies (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL UNIQUE,
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    body_part TEXT,
    institution TEXT,
    series_date TEXT,
    attrs JSONB NOT NULL DEFAULT '{}',
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX series_study_fk ON series (study_fk, modality);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_fk BIGINT NOT NULL REFERENCES series (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    number_of_frames INTEGER,
    received_at DOUBLE PRECISION NOT NULL,
    indexed_at DOUBLE PRECISION NOT NULL,
    attrs JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX instances_series_fk ON instances (series_fk, instance_number);
CREATE INDEX instances_study_uid ON instances (study_uid);
