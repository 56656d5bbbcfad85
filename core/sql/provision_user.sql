-- Provision the user unless deleted: see functions/aiwrap_provision_user.sql.
SELECT aiwrap_provision_user(%(id)s, %(budget)s)
