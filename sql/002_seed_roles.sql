-- 002_seed_roles: the default roles and what each may do. Permissions are data:
-- a deployment can add a role or move a permission with plain SQL, and every
-- check on the server reads these tables.

INSERT INTO core.roles (name, title, assignable) VALUES
    ('admin',      'Administrator', false),
    ('manager',    'Manager',       false),
    ('accountant', 'Accountant',    true),
    ('worker',     'Worker',        true);

INSERT INTO core.permissions (name, description) VALUES
    ('can_add_task',        'Create tasks'),
    ('can_shuffle_tasks',   'Reassign all open tasks at random'),
    ('can_view_all_tasks',  'See every task, not only one''s own'),
    ('can_manage_users',    'Create users, change roles, deactivate users');

INSERT INTO core.role_permissions (role, permission) VALUES
    ('admin',   'can_add_task'),
    ('admin',   'can_shuffle_tasks'),
    ('admin',   'can_view_all_tasks'),
    ('admin',   'can_manage_users'),
    ('manager', 'can_add_task'),
    ('manager', 'can_shuffle_tasks'),
    ('manager', 'can_view_all_tasks');
