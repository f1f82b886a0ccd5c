DROP TABLE retained;
