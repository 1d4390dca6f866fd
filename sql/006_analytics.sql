-- 006_analytics: who may see analytics (service 3). Admins only, as data,
-- so a deployment can grant it to another role with one INSERT.

INSERT INTO core.permissions (name, description) VALUES
    ('can_view_analytics', 'See the analytics dashboard: earnings, negative balances, top tasks');
INSERT INTO core.role_permissions (role, permission) VALUES
    ('admin', 'can_view_analytics');
