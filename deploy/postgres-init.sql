-- One database per service (DATABASE_URL names lianxiao_{service}); run once on an empty volume.
CREATE DATABASE lianxiao_accounts;
CREATE DATABASE lianxiao_activities;
CREATE DATABASE lianxiao_reporting;
CREATE DATABASE lianxiao_classroom_relay;
CREATE DATABASE lianxiao_resources;
