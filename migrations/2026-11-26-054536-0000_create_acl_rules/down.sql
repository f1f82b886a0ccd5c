DROP TABLE acl_rules;
