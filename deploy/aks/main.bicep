// kars on AKS: what `kars up --aks` provisions (see docs/blueprints/03-enterprise-self-hosted.md).
//
//   AKS with the OIDC issuer and workload identity, Azure CNI overlay with Cilium
//   network policy (sandboxes rely on NetworkPolicy), the Key Vault CSI add-on;
//   ACR, pullable by the kubelet identity; Key Vault (RBAC); an Azure AI Foundry
//   resource (AIServices) with a project and a model deployment; a user-assigned
//   identity for the first sandbox's router, federated with its Kubernetes
//   ServiceAccount, allowed to call the model and to read Key Vault secrets; and,
//   with exposeRegistry, an Application Gateway WAF_v2 driven by the AGIC add-on
//   in front of the AgentMesh registry.
//
// Every name is a parameter: `kars up --aks` derives them deterministically, so
// a re-run targets the same resources, and ARM's incremental mode makes it a no-op.
targetScope = 'resourceGroup'

@description('Region of every resource.')
param location string = resourceGroup().location

@description('AKS cluster name.')
@minLength(1)
@maxLength(63)
param clusterName string

@description('Container registry name (globally unique, 5-50 alphanumerics).')
@minLength(5)
@maxLength(50)
param acrName string

@description('Key Vault name (globally unique, 3-24 characters).')
@minLength(3)
@maxLength(24)
param keyVaultName string

@description('Azure AI Foundry resource name; also its custom subdomain.')
@minLength(2)
@maxLength(64)
param foundryName string

@description('Azure AI Foundry project name.')
param foundryProjectName string

@description('Model to deploy, e.g. gpt-4.1.')
param modelName string

@description('Model version, e.g. 2025-04-14.')
param modelVersion string

@description('Deployment SKU: GlobalStandard, Standard, DataZoneStandard, ...')
param modelSku string = 'GlobalStandard'

@description('Deployment capacity in thousands of tokens per minute.')
@minValue(1)
param modelCapacity int

@description('Agent pool size.')
@minValue(1)
@maxValue(100)
param nodeCount int

@description('Agent pool VM size.')
param nodeVmSize string

@description('Kubernetes version; empty takes the region default.')
param kubernetesVersion string = ''

@description('Name of the router identity (user-assigned managed identity).')
param routerIdentityName string

@description('Namespace of the first sandbox (kars-<name>).')
param sandboxNamespace string

@description('ServiceAccount of the first sandbox router (the sandbox name).')
param sandboxServiceAccount string

@description('Put an Application Gateway WAF_v2 (AGIC) in front of the mesh registry.')
param exposeRegistry bool = false

@description('Tags on every resource.')
param tags object = {}

var vnetName = '${clusterName}-vnet'
var appGwName = '${clusterName}-appgw'

// Built-in role definition IDs.
var roleAcrPull = '7f951dda-4ed3-4680-a7ca-43fe172d538d'
var roleCognitiveServicesOpenAIUser = '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var roleContributor = 'b24988ac-6180-42a0-ab88-20f7382dd24c'
var roleReader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var roleNetworkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [ '10.224.0.0/12' ] }
    subnets: [
      { name: 'aks', properties: { addressPrefix: '10.224.0.0/16' } }
      { name: 'appgw', properties: { addressPrefix: '10.225.0.0/24' } }
    ]
  }
}

resource acr 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: acrName
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
  }
}

resource routerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: routerIdentityName
  location: location
  tags: tags
}

resource foundry 'Microsoft.CognitiveServices/accounts@2025-06-01' = {
  name: foundryName
  location: location
  tags: tags
  kind: 'AIServices'
  sku: { name: 'S0' }
  identity: { type: 'SystemAssigned' }
  properties: {
    customSubDomainName: foundryName
    allowProjectManagement: true
    // Entra ID only: the router authenticates with its workload identity,
    // never with a key.
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource foundryProject 'Microsoft.CognitiveServices/accounts/projects@2025-06-01' = {
  parent: foundry
  name: foundryProjectName
  location: location
  identity: { type: 'SystemAssigned' }
  properties: {}
}

resource modelDeployment 'Microsoft.CognitiveServices/accounts/deployments@2025-06-01' = {
  parent: foundry
  name: modelName
  sku: {
    name: modelSku
    capacity: modelCapacity
  }
  properties: {
    model: {
      format: 'OpenAI'
      name: modelName
      version: modelVersion
    }
    raiPolicyName: 'Microsoft.DefaultV2'
  }
}

resource appGwIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = if (exposeRegistry) {
  name: '${appGwName}-ip'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: { publicIPAllocationMethod: 'Static' }
}

resource wafPolicy 'Microsoft.Network/ApplicationGatewayWebApplicationFirewallPolicies@2024-05-01' = if (exposeRegistry) {
  name: '${appGwName}-waf'
  location: location
  tags: tags
  properties: {
    policySettings: {
      state: 'Enabled'
      mode: 'Prevention'
      requestBodyCheck: true
    }
    managedRules: {
      managedRuleSets: [
        { ruleSetType: 'OWASP', ruleSetVersion: '3.2' }
      ]
    }
  }
}

// AGIC rewrites listeners, pools and rules; these are the placeholders
// Application Gateway requires to exist at creation.
resource appGw 'Microsoft.Network/applicationGateways@2024-05-01' = if (exposeRegistry) {
  name: appGwName
  location: location
  tags: tags
  properties: {
    sku: { name: 'WAF_v2', tier: 'WAF_v2' }
    autoscaleConfiguration: { minCapacity: 1, maxCapacity: 3 }
    firewallPolicy: { id: wafPolicy.id }
    gatewayIPConfigurations: [
      { name: 'gateway', properties: { subnet: { id: '${vnet.id}/subnets/appgw' } } }
    ]
    frontendIPConfigurations: [
      { name: 'public', properties: { publicIPAddress: { id: appGwIp.id } } }
    ]
    frontendPorts: [
      { name: 'http', properties: { port: 80 } }
    ]
    backendAddressPools: [
      { name: 'placeholder', properties: {} }
    ]
    backendHttpSettingsCollection: [
      { name: 'placeholder', properties: { port: 80, protocol: 'Http' } }
    ]
    httpListeners: [
      {
        name: 'placeholder'
        properties: {
          frontendIPConfiguration: { id: resourceId('Microsoft.Network/applicationGateways/frontendIPConfigurations', appGwName, 'public') }
          frontendPort: { id: resourceId('Microsoft.Network/applicationGateways/frontendPorts', appGwName, 'http') }
          protocol: 'Http'
        }
      }
    ]
    requestRoutingRules: [
      {
        name: 'placeholder'
        properties: {
          ruleType: 'Basic'
          priority: 19500
          httpListener: { id: resourceId('Microsoft.Network/applicationGateways/httpListeners', appGwName, 'placeholder') }
          backendAddressPool: { id: resourceId('Microsoft.Network/applicationGateways/backendAddressPools', appGwName, 'placeholder') }
          backendHttpSettings: { id: resourceId('Microsoft.Network/applicationGateways/backendHttpSettingsCollection', appGwName, 'placeholder') }
        }
      }
    ]
  }
}

resource aks 'Microsoft.ContainerService/managedClusters@2024-09-01' = {
  name: clusterName
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    kubernetesVersion: empty(kubernetesVersion) ? null : kubernetesVersion
    dnsPrefix: clusterName
    enableRBAC: true
    oidcIssuerProfile: { enabled: true }
    securityProfile: {
      workloadIdentity: { enabled: true }
    }
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        count: nodeCount
        vmSize: nodeVmSize
        osType: 'Linux'
        osSKU: 'AzureLinux'
        type: 'VirtualMachineScaleSets'
        vnetSubnetID: '${vnet.id}/subnets/aks'
      }
    ]
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      networkPolicy: 'cilium'
      podCidr: '192.168.0.0/16'
      serviceCidr: '10.0.0.0/16'
      dnsServiceIP: '10.0.0.10'
    }
    addonProfiles: union({
      azureKeyvaultSecretsProvider: { enabled: true }
    }, exposeRegistry ? {
      ingressApplicationGateway: {
        enabled: true
        config: { applicationGatewayId: appGw.id }
      }
    } : {})
  }
}

// The kubelet pulls kars's images from the ACR.
resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(acr.id, aks.id, roleAcrPull)
  scope: acr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleAcrPull)
    principalId: aks.properties.identityProfile.kubeletidentity.objectId
    principalType: 'ServicePrincipal'
  }
}

// The router's identity calls the model and reads Key Vault secrets; the
// agent never holds it.
resource routerModelAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(foundry.id, routerIdentity.id, roleCognitiveServicesOpenAIUser)
  scope: foundry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleCognitiveServicesOpenAIUser)
    principalId: routerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource routerSecretsAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, routerIdentity.id, roleKeyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsUser)
    principalId: routerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Workload identity: the sandbox's ServiceAccount token (audience
// api://AzureADTokenExchange), projected into the router container only, is
// exchanged for the router identity's Entra token.
resource routerFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: routerIdentity
  name: 'kars-${sandboxNamespace}-${sandboxServiceAccount}'
  properties: {
    issuer: aks.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:${sandboxNamespace}:${sandboxServiceAccount}'
    audiences: [ 'api://AzureADTokenExchange' ]
  }
}

// AGIC manages the gateway: Contributor on it, Reader on the group, Network
// Contributor on the virtual network.
resource agicGateway 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (exposeRegistry) {
  name: guid(appGwName, clusterName, roleContributor)
  scope: appGw
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleContributor)
    principalId: exposeRegistry ? aks.properties.addonProfiles.ingressApplicationGateway.identity.objectId : ''
    principalType: 'ServicePrincipal'
  }
}

resource agicReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (exposeRegistry) {
  name: guid(resourceGroup().id, clusterName, roleReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleReader)
    principalId: exposeRegistry ? aks.properties.addonProfiles.ingressApplicationGateway.identity.objectId : ''
    principalType: 'ServicePrincipal'
  }
}

resource agicNetwork 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (exposeRegistry) {
  name: guid(vnet.id, clusterName, roleNetworkContributor)
  scope: vnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleNetworkContributor)
    principalId: exposeRegistry ? aks.properties.addonProfiles.ingressApplicationGateway.identity.objectId : ''
    principalType: 'ServicePrincipal'
  }
}

output clusterName string = aks.name
output oidcIssuerUrl string = aks.properties.oidcIssuerProfile.issuerURL
output acrLoginServer string = acr.properties.loginServer
output keyVaultUri string = keyVault.properties.vaultUri
output foundryEndpoint string = 'https://${foundryName}.openai.azure.com'
output foundryProject string = foundryProject.name
output modelDeployment string = modelDeployment.name
output routerClientId string = routerIdentity.properties.clientId
output tenantId string = subscription().tenantId
output registryPublicIp string = exposeRegistry ? appGwIp.properties.ipAddress : ''
