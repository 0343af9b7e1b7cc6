-- The read models of one database belong to one namespace: two namespaces
-- projecting into the same tables would mix tenants and share a checkpoint.
CREATE TABLE projection_namespace (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    namespace   text NOT NULL
);
