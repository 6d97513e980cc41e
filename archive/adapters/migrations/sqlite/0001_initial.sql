-- Catalog schema, version 1 (SQLite): the Query/Retrieve information model
-- of PS3.4 C.6 normalised into patients, studies, series and instances.
-- JSON columns hold DICOM JSON (PS3.18 F.2) as TEXT; times are unix seconds.
-- LIKE is case sensitive on the catalog's connections (PRAGMA case_sensitive_like),
-- so the BINARY indexes below serve prefix wildcards such as 'DOE%'.

CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL DEFAULT '',
    patient_name TEXT,
    patient_name_folded TEXT,
    birth_date TEXT,
    sex TEXT,
    attrs TEXT NOT NULL DEFAULT '{}',
    UNIQUE (patient_id, issuer)  -- also the patient_id index (leftmost column)
);
CREATE INDEX patients_name_folded ON patients (patient_name_folded);

CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    patient_fk INTEGER NOT NULL REFERENCES patients (id),
    study_uid TEXT NOT NULL UNIQUE,
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    study_description TEXT,
    referring_physician TEXT,
    referring_physician_folded TEXT,
    attrs TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE INDEX studies_patient_fk ON studies (patient_fk);
CREATE INDEX studies_date ON studies (study_date DESC, study_uid);
CREATE INDEX studies_accession ON studies (accession_number);

CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    study_fk INTEGER NOT NULL REFERENCES studies (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL UNIQUE,
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    body_part TEXT,
    institution TEXT,
    series_date TEXT,
    attrs TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE INDEX series_study_fk ON series (study_fk, modality);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    series_fk INTEGER NOT NULL REFERENCES series (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    number_of_frames INTEGER,
    received_at REAL NOT NULL,
    indexed_at REAL NOT NULL,
    attrs TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX instances_series_fk ON instances (series_fk, instance_number);
CREATE INDEX instances_study_uid ON instances (study_uid);
