-- Was the user deleted in Clerk (and so must never be recreated)?
SELECT EXISTS (SELECT 1 FROM user_tombstones WHERE user_id = %(id)s)
